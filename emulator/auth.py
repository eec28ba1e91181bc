"""Who is calling: the OAuth server shared by all portals, incoming webhooks, and event ``auth`` blocks.

The OAuth side mirrors facts §7.2: authorization codes live 30 s and are single use; access tokens live
``portal.token_ttl_s`` (1 h by default) and can be expired on demand; every refresh returns a new pair
and the refresh token used for it dies (older docs; facts §10.9). Access tokens issued earlier stay
valid until they expire. Webhooks (facts §7.1) act as their user with the ticked scopes.

The OAuth server also answers its own ``app.info`` (facts §7.5), which apps use to check that a token
belongs to them and to a portal. The real server has its own host (``https://oauth.bitrix.info/rest/``);
here the default portal owns the root's ``/rest/``, so the OAuth server's REST lives under
``/oauth/rest/`` (``oauth`` is a reserved first segment, never a portal). It has its own fault plan,
with the method names ``token`` (the token endpoint) and ``app.info``.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from emulator.errors import AuthError
from emulator.faults import FaultPlan
from emulator.registry import Caller

if TYPE_CHECKING:
    from emulator.portal import App, Installation, Portal

CODE_TTL_S = 30
REFRESH_TTL_S = 180 * 24 * 3600  # current docs (facts §7.2); older docs said 28 days
# Expired access tokens keep answering 401 expired_token (not invalid_token) this long, then are dropped.
EXPIRED_TOKEN_MEMORY_S = 24 * 3600
# app.info's install.member_type; the real values are not documented (facts §7.5 shows the key only).
MEMBER_TYPE = "PORTAL"
_PURGE_EVERY = 1024  # issued pairs between sweeps


class OAuthError(Exception):
    """An answer of the token endpoint: ``{"error", "error_description"}`` with an HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict:
        return {"error": self.error, "error_description": self.description}


@dataclass
class _Grant:
    """What a code or token stands for. Never printed: the token itself is only the dict key."""

    portal: Portal
    client_id: str
    user_id: int
    expires_at: float


def _new_secret() -> str:
    return secrets.token_hex(32)


def scope_string(scopes: frozenset[str]) -> str:
    return ",".join(sorted(scopes))


class OAuthServer:
    """The emulator's oauth.bitrix.info: registered apps, codes and tokens for every portal."""

    def __init__(self, root_url: str = "") -> None:
        self.root_url = root_url
        self.apps: dict[str, App] = {}
        self._codes: dict[str, _Grant] = {}
        self._access: dict[str, _Grant] = {}
        self._refresh: dict[str, _Grant] = {}
        self._issued = 0
        self.faults = FaultPlan()
        self.calls: Counter[str] = Counter()  # requests per endpoint ("token", "app.info"), for tests

    @property
    def host(self) -> str:
        return self.root_url.split("://", 1)[-1]

    @property
    def server_endpoint(self) -> str:
        return f"{self.root_url}/oauth/rest/"

    @property
    def token_url(self) -> str:
        return f"{self.root_url}/oauth/token/"

    def register_app(self, app: App) -> None:
        self.apps[app.client_id] = app

    # -- issuing ------------------------------------------------------------------------------

    def issue_tokens(self, portal: Portal, installation: Installation, user_id: int) -> dict[str, Any]:
        """A new token pair for ``user_id`` in the token endpoint's response shape (facts §7.2)."""
        now = time.time()
        self._issued += 1
        if self._issued % _PURGE_EVERY == 0:
            # Every event POST carries a fresh pair (facts §7.4), so long runs would pile them up.
            self._purge(self._access, grace_s=EXPIRED_TOKEN_MEMORY_S)
            self._purge(self._refresh)
        access_token, refresh_token = _new_secret(), _new_secret()
        client_id = installation.app.client_id
        expires = int(now + portal.token_ttl_s)
        self._access[access_token] = _Grant(portal, client_id, user_id, now + portal.token_ttl_s)
        self._refresh[refresh_token] = _Grant(portal, client_id, user_id, now + REFRESH_TTL_S)
        return {
            "access_token": access_token,
            "expires": expires,
            "expires_in": portal.token_ttl_s,
            "scope": scope_string(installation.app.scopes),
            # The token endpoint names itself here; the portal is in client_endpoint (facts §7.2).
            "domain": self.host,
            "server_endpoint": self.server_endpoint,
            "status": installation.app.status,
            "client_endpoint": portal.client_endpoint,
            "member_id": portal.member_id,
            "user_id": user_id,
            "refresh_token": refresh_token,
        }

    def issue_code(self, portal: Portal, client_id: str, user_id: int) -> str:
        self._purge(self._codes)
        code = _new_secret()
        self._codes[code] = _Grant(portal, client_id, user_id, time.time() + CODE_TTL_S)
        return code

    # -- the token endpoint -------------------------------------------------------------------

    def grant(self, params: dict[str, Any]) -> dict[str, Any]:
        """Answer ``/oauth/token/`` for ``authorization_code`` and ``refresh_token`` grants."""
        grant_type = params.get("grant_type")
        app = self.apps.get(str(params.get("client_id", "")))
        if grant_type not in ("authorization_code", "refresh_token"):
            raise OAuthError("invalid_request", "grant_type must be authorization_code or refresh_token")
        if app is None or not secrets.compare_digest(str(params.get("client_secret", "")),
                                                     app.client_secret):
            raise OAuthError("invalid_client", "Invalid client credentials", status=401)
        if grant_type == "authorization_code":
            grant = self._codes.pop(str(params.get("code", "")), None)
            if grant is None or grant.expires_at <= time.time() or grant.client_id != app.client_id:
                raise OAuthError("invalid_grant", "Invalid authorization code")
        else:
            grant = self._refresh.pop(str(params.get("refresh_token", "")), None)
            if grant is None or grant.expires_at <= time.time() or grant.client_id != app.client_id:
                raise OAuthError("invalid_grant", "Invalid refresh token")
        installation = grant.portal.installations.get(app.client_id)
        if installation is None:
            raise OAuthError("NOT_INSTALLED", "Application is not installed on the portal")
        return self.issue_tokens(grant.portal, installation, grant.user_id)

    # -- checking -----------------------------------------------------------------------------

    def caller(self, portal: Portal, access_token: str | None, auth_connector: str) -> Caller:
        """The OAuth caller behind ``access_token`` on ``portal``, or the documented 401."""
        if not access_token:
            raise AuthError("Wrong authorization data", code="NO_AUTH_FOUND")
        grant = self._access.get(access_token)
        if grant is None or grant.portal is not portal:
            raise AuthError("Unable to get application by token", code="invalid_token")
        if grant.expires_at <= time.time():
            raise AuthError("The access token provided has expired.", code="expired_token")
        installation = portal.installations.get(grant.client_id)
        if installation is None:
            raise AuthError("Application not found", code="APPLICATION_NOT_FOUND")
        user = portal.users.get(grant.user_id)
        if user is None:
            raise AuthError("Unable to authorize user", code="authorization_error")
        return Caller(
            auth_type="oauth",
            user_id=user.id,
            is_admin=user.is_admin,
            scopes=installation.app.scopes,
            client_id=grant.client_id,
            auth_connector=auth_connector,
        )

    def app_info(self, access_token: str | None) -> dict[str, Any]:
        """The OAuth server's ``app.info`` for a token (facts §7.5), or the usual 401 error.

        Answers ``{"client_id", "scope", "expires", "install": {...}, "user_id"}``: which app the
        token was issued to and on which portal that app is installed.
        """
        if not access_token:
            raise AuthError("Wrong authorization data", code="NO_AUTH_FOUND")
        grant = self._access.get(access_token)
        if grant is None:
            raise AuthError("Unable to get application by token", code="invalid_token")
        if grant.expires_at <= time.time():
            raise AuthError("The access token provided has expired.", code="expired_token")
        portal = grant.portal
        installation = portal.installations.get(grant.client_id)
        if installation is None:
            raise AuthError("Application not found", code="APPLICATION_NOT_FOUND")
        app = installation.app
        scope = scope_string(app.scopes)
        return {
            "client_id": grant.client_id,
            "scope": scope,
            "expires": int(grant.expires_at),
            "install": {
                "installed": True,
                "version": 1,
                "status": app.status,
                "scope": scope,
                "domain": portal.domain,
                "uri": app.handler_url,
                "client_endpoint": portal.client_endpoint,
                "member_id": portal.member_id,
                "member_type": MEMBER_TYPE,
            },
            "user_id": grant.user_id,
        }

    def expire(self, portal: Portal | None, client_id: str | None = None, access_token: str | None = None) -> int:
        """Make access tokens of ``portal`` (any portal: None; one app's, or one token) expired now;
        returns how many."""
        now = time.time()
        expired = 0
        for token, grant in self._access.items():
            if (portal is not None and grant.portal is not portal) or grant.expires_at <= now:
                continue
            if (client_id is None or grant.client_id == client_id) and access_token in (None, token):
                grant.expires_at = now
                expired += 1
        return expired

    @staticmethod
    def _purge(store: dict[str, _Grant], grace_s: float = 0.0) -> None:
        cutoff = time.time() - grace_s
        for key in [key for key, grant in store.items() if grant.expires_at <= cutoff]:
            del store[key]


def webhook_caller(portal: Portal, user_id: str, code: str, auth_connector: str) -> Caller:
    """The caller behind ``/rest/{user_id}/{code}/``, or 401 ``INVALID_CREDENTIALS`` (facts §7.1, §10.2)."""
    webhook = portal.webhooks.get(code)
    user = portal.users.get(webhook.user_id) if webhook is not None else None
    if webhook is None or user is None or str(webhook.user_id) != user_id:
        raise AuthError("Invalid request credentials", code="INVALID_CREDENTIALS")
    return Caller(
        auth_type="webhook",
        user_id=user.id,
        is_admin=user.is_admin,
        scopes=webhook.scopes,
        webhook_code=code,
        auth_connector=auth_connector,
    )


def event_auth(portal: Portal, client_id: str) -> dict[str, Any]:
    """The ``auth`` block of an event POSTed to the app (ONOFFLINEEVENT and friends; facts §7.4).

    Carries a fresh token pair of the installing user.
    """
    installation = portal.installations[client_id]
    if portal.oauth is None:
        raise RuntimeError("portal is not attached to an OAuth server")
    tokens = portal.oauth.issue_tokens(portal, installation, installation.installed_by)
    return auth_block(portal, installation, tokens)


def auth_block(portal: Portal, installation: Installation, tokens: dict[str, Any]) -> dict[str, Any]:
    """An event ``auth`` block around issued ``tokens``; ``domain`` is the portal here (facts §7.4)."""
    return {
        "access_token": tokens["access_token"],
        "expires": tokens["expires"],
        "expires_in": tokens["expires_in"],
        "scope": tokens["scope"],
        "domain": portal.domain,
        "server_endpoint": tokens["server_endpoint"],
        "status": tokens["status"],
        "client_endpoint": tokens["client_endpoint"],
        "member_id": portal.member_id,
        "user_id": tokens["user_id"],
        "refresh_token": tokens["refresh_token"],
        "application_token": installation.application_token,
    }
