"""One emulated Bitrix24 portal: its users, apps, plan, limits, CRM data and event queues.

Several portals live in one server process. Everything a method handler touches hangs off the
`Portal`; handlers run under ``portal.lock`` so queue reservations are atomic (facts §2.7).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emulator.faults import FaultPlan
from emulator.limits import LimitSettings, PortalLimits
from emulator.stats import PortalStats

if TYPE_CHECKING:
    from emulator.auth import OAuthServer

PLAN_FEATURES: dict[str, frozenset[str]] = {
    "standard": frozenset(),
    "professional": frozenset({"rest_offline_extended", "rest_auth_connector"}),
    "enterprise": frozenset({"rest_offline_extended", "rest_auth_connector"}),
}

# Leaky bucket per plan (facts §6.1): (bucket size, drain per second).
PLAN_RATE_LIMITS: dict[str, tuple[int, float]] = {
    "standard": (50, 2.0),
    "professional": (50, 2.0),
    "enterprise": (250, 5.0),
}


@dataclass
class User:
    id: int
    name: str  # "First Last"
    is_admin: bool = False
    active: bool = True  # False: fired (user.get ACTIVE=false)
    departments: tuple[int, ...] = ()  # UF_DEPARTMENT
    position: str = ""  # WORK_POSITION


@dataclass
class App:
    """An OAuth application known to the emulator (local or marketplace: same keys on every portal)."""

    client_id: str
    client_secret: str
    scopes: frozenset[str]
    handler_url: str = ""  # install callback (API-only app: POSTed right after install, §7.3)
    redirect_uri: str = ""  # where /oauth/authorize/ sends the code; handler_url when empty (§7.2)

    @property
    def status(self) -> str:
        """The app status letter of tokens and events: ``L`` local, ``F`` free (facts §7.4)."""
        return "L" if self.client_id.startswith("local.") else "F"


@dataclass
class Installation:
    """An app installed on this portal."""

    app: App
    installed_by: int  # user id the tokens act as
    application_token: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class Webhook:
    user_id: int
    code: str
    scopes: frozenset[str]


@dataclass
class Portal:
    name: str  # "default" answers at the server root; others under "/{name}/"
    plan: str = "professional"
    member_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    users: dict[int, User] = field(default_factory=dict)
    installations: dict[str, Installation] = field(default_factory=dict)  # by client_id
    webhooks: dict[str, Webhook] = field(default_factory=dict)  # by code
    lock: threading.RLock = field(default_factory=threading.RLock)
    # Set by the server once it knows its address, e.g. "http://127.0.0.1:8000" or ".../p2".
    base_url: str = ""
    # Attached by the CRM / offline-events side (emulator.crm, emulator.offline) when the portal is built.
    crm: object = None
    events: object = None
    # Transport side (emulator.limits, .faults, .stats, .auth): configuration and live state.
    limit_settings: LimitSettings = field(default_factory=LimitSettings)
    latency_ms: float = 0.0  # added to every REST request (asyncio sleep: other requests go on)
    token_ttl_s: int = 3600  # access-token lifetime (facts §7.2: 1 hour)
    # The unsettled point of facts §2.10: does event.offline.error also take rows that are already in
    # the error lane out of a `get error=1 clear=0` reservation? False leaves them reserved.
    error_unreserves_lane_rows: bool = False
    authorize_user_id: int | None = None  # who /oauth/authorize/ approves as; None = the installer
    oauth: OAuthServer | None = None  # the shared auth server (like oauth.bitrix.info), set by the world
    activity: object = None  # a running emulator.activity.ActivityGenerator, if any
    faults: FaultPlan = field(default_factory=FaultPlan)
    stats: PortalStats = field(default_factory=PortalStats)
    limits: PortalLimits = field(init=False)

    def __post_init__(self) -> None:
        if self.plan not in PLAN_FEATURES:
            raise ValueError(f"unknown plan {self.plan!r}; expected one of {', '.join(PLAN_FEATURES)}")
        self.limits = PortalLimits(self.limit_settings, PLAN_RATE_LIMITS[self.plan])

    def set_plan(self, plan: str) -> None:
        if plan not in PLAN_FEATURES:
            raise ValueError(f"unknown plan {plan!r}; expected one of {', '.join(PLAN_FEATURES)}")
        self.plan = plan
        self.reconfigure_limits()

    def reconfigure_limits(self) -> None:
        """Apply changed `limit_settings` (or plan) to the live rate limiter."""
        self.limits.reconfigure(PLAN_RATE_LIMITS[self.plan])

    @property
    def features(self) -> frozenset[str]:
        return PLAN_FEATURES[self.plan]

    @property
    def client_endpoint(self) -> str:
        return f"{self.base_url}/rest/"

    @property
    def domain(self) -> str:
        """The portal's address without scheme, as tokens and events report it (``host:port[/name]``)."""
        return self.base_url.split("://", 1)[-1]

    def add_user(self, user: User) -> User:
        """A user joins the portal (registration completed) and ``ONUSERADD`` fires with the user's
        fields as data, without a ``FIELDS`` wrapper ([D] rest_help/general/events/onuseradd.php:
        ``ID``, ``ACTIVE``, ``NAME``, ``LAST_NAME``, ``UF_DEPARTMENT``); raises `ValueError` for an id
        already taken."""
        from emulator.crm.origin import Origin  # the CRM side builds on this module

        with self.lock:
            if user.id in self.users:
                raise ValueError(f"user {user.id} exists")
            self.users[user.id] = user
            first, _, last = user.name.partition(" ")
            if self.events is not None:
                self.events.emit("ONUSERADD", {  # type: ignore[attr-defined]
                    "ID": str(user.id), "ACTIVE": "Y" if user.active else "N", "NAME": first, "LAST_NAME": last,
                    "UF_DEPARTMENT": [str(department) for department in user.departments]},
                    Origin(user_id=user.id))
        return user
