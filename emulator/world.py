"""Everything one emulator process serves: its portals, the shared OAuth server and its apps.

The default portal answers at the server root, others under ``/{name}/`` (contract "URLs"). Portals
are built here: users, plan and limits first, then the CRM data and event queues of the crm half
(``emulator.crm.attach`` then ``emulator.events.attach``, contract §2).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from emulator import crm, events
from emulator.auth import OAuthServer, auth_block
from emulator.limits import LimitSettings
from emulator.outbound import post_form
from emulator.portal import App, Installation, Portal, User, Webhook

DEFAULT_PORTAL = "default"
# First path segments the server routes itself; a portal cannot be named like them.
RESERVED_NAMES = frozenset({"rest", "oauth", "_emulator"})
ALL_SCOPES = frozenset({"crm", "user", "department"})
DEFAULT_COUNTS: dict[str, int] = {
    "deal": 100, "contact": 50, "company": 20, "lead": 50, "activity": 100, "item": 20,
}
# Admin user 1 plus a few non-admin users (contract "CLI"); 5-9 are the sales staff that own
# seeded deals (user 8 has been fired: reference data keeps fired users, facts §4.8).
DEFAULT_USERS: tuple[tuple[int, str, bool], ...] = (
    (1, "Ada Admin", True),
    (2, "Boris Sales", False),
    (3, "Clara Support", False),
    (4, "Dmitri Manager", False),
    (5, "Elena Volkova", False),
    (6, "Farid Novak", False),
    (7, "Greta Berg", False),
    (8, "Hugo Rossi", False),
    (9, "Irina Sokolova", False),
)


class UnknownPortal(LookupError):
    pass


class UnknownApp(LookupError):
    pass


@dataclass
class EmulatorOptions:
    """The options of ``python -m emulator serve`` (and of ``emulator.testing.run_emulator``)."""

    host: str = "127.0.0.1"
    port: int = 0
    plan: str = "professional"
    limits: bool = True
    seed: int = 1
    counts: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_COUNTS))
    smart_process_types: int = 1
    client_id: str = "local.emulator.app"
    client_secret: str = "emulator-secret"
    webhook: str = "1/emulatorwebhook"  # "{user_id}/{code}"
    token_ttl: int = 3600
    latency_ms: float = 0.0
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    app_handler_url: str = ""

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_certfile else "http"


class World:
    def __init__(self, root_url: str = "") -> None:
        self.oauth = OAuthServer(root_url)
        self.portals: dict[str, Portal] = {}

    @property
    def root_url(self) -> str:
        return self.oauth.root_url

    @root_url.setter
    def root_url(self, url: str) -> None:
        self.oauth.root_url = url.rstrip("/")
        for portal in self.portals.values():
            portal.base_url = self._base_url(portal.name)

    def _base_url(self, name: str) -> str:
        return self.root_url if name == DEFAULT_PORTAL else f"{self.root_url}/{name}"

    # -- portals ------------------------------------------------------------------------------

    def add_portal(self, name: str, *, plan: str = "professional", seed: int = 1,
                   counts: Mapping[str, int] | None = None, smart_process_types: int = 1,
                   users: Iterable[tuple[int, str, bool]] = DEFAULT_USERS,
                   limits: LimitSettings | None = None, token_ttl_s: int = 3600,
                   latency_ms: float = 0.0) -> Portal:
        if not name or "/" in name or name in RESERVED_NAMES:
            raise ValueError(f"invalid portal name {name!r}")
        if name in self.portals:
            raise ValueError(f"portal {name!r} exists")
        portal = Portal(name=name, plan=plan, limit_settings=limits or LimitSettings(),
                        token_ttl_s=token_ttl_s, latency_ms=latency_ms)
        portal.base_url = self._base_url(name)
        portal.oauth = self.oauth
        for user_id, user_name, is_admin in users:
            portal.users[user_id] = User(user_id, user_name, is_admin)
        crm.attach(portal, seed, dict(DEFAULT_COUNTS if counts is None else counts),
                   smart_process_types=smart_process_types)
        events.attach(portal)
        self.portals[name] = portal
        return portal

    def portal(self, name: str) -> Portal:
        try:
            return self.portals[name]
        except KeyError:
            raise UnknownPortal(f"no portal {name!r}") from None

    def route(self, path: str) -> tuple[Portal | None, str]:
        """The portal a request path belongs to and the path below the portal's base."""
        first, slash, rest = path[1:].partition("/")
        portal = self.portals.get(first) if first not in RESERVED_NAMES else None
        if portal is not None:
            return portal, "/" + rest if slash else "/"
        return self.portals.get(DEFAULT_PORTAL), path

    # -- apps ---------------------------------------------------------------------------------

    def register_app(self, client_id: str, client_secret: str, scopes: Iterable[str] = ALL_SCOPES,
                     handler_url: str = "", redirect_uri: str = "") -> App:
        app = App(client_id, client_secret, frozenset(scopes), handler_url, redirect_uri)
        self.oauth.register_app(app)
        return app

    def install(self, portal: Portal, client_id: str, user_id: int | None = None) -> dict[str, Any]:
        """Install (or re-install) an app for a user; POSTs the install callback (facts §7.3, §7.4).

        Returns the token response plus ``application_token``, which stays the same on re-install.
        """
        app = self.oauth.apps.get(client_id)
        if app is None:
            raise UnknownApp(f"no app {client_id!r}")
        if user_id is None:
            user_id = min(user.id for user in portal.users.values() if user.is_admin)
        if user_id not in portal.users:
            raise ValueError(f"no user {user_id} on portal {portal.name!r}")
        with portal.lock:
            installation = portal.installations.get(client_id)
            if installation is None:
                installation = portal.installations[client_id] = Installation(app, user_id)
            installation.app, installation.installed_by = app, user_id
            tokens = self.oauth.issue_tokens(portal, installation, user_id)
        if app.handler_url:
            post_form(app.handler_url, {
                "event": "ONAPPINSTALL",
                "data": {"VERSION": "1", "ACTIVE": "Y", "INSTALLED": "Y", "LANGUAGE_ID": "en"},
                "ts": str(int(time.time())),
                "auth": auth_block(portal, installation, tokens),
            })
        return {**tokens, "application_token": installation.application_token}

    def add_webhook(self, portal: Portal, user_id: int, code: str,
                    scopes: Iterable[str] = ALL_SCOPES) -> Webhook:
        if user_id not in portal.users:
            raise ValueError(f"no user {user_id} on portal {portal.name!r}")
        webhook = portal.webhooks[code] = Webhook(user_id, code, frozenset(scopes))
        return webhook


def build_world(options: EmulatorOptions, root_url: str) -> World:
    """The world ``serve`` starts with: the default portal, its app (installed for user 1), its webhook."""
    world = World(root_url)
    limits = LimitSettings(enabled=options.limits)
    portal = world.add_portal(DEFAULT_PORTAL, plan=options.plan, seed=options.seed, counts=options.counts,
                              smart_process_types=options.smart_process_types, limits=limits,
                              token_ttl_s=options.token_ttl, latency_ms=options.latency_ms)
    world.register_app(options.client_id, options.client_secret, handler_url=options.app_handler_url)
    world.install(portal, options.client_id, 1)
    if options.webhook:
        user_id, _, code = options.webhook.partition("/")
        world.add_webhook(portal, int(user_id), code)
    return world
