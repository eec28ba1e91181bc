"""One emulated Bitrix24 portal: its users, apps, plan, limits, CRM data and event queues.

Several portals live in one server process. Everything a method handler touches hangs off the
`Portal`; handlers run under ``portal.lock`` so queue reservations are atomic (facts §2.7).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field

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
    name: str
    is_admin: bool = False


@dataclass
class App:
    """An OAuth application known to the emulator (local or marketplace: same keys on every portal)."""

    client_id: str
    client_secret: str
    scopes: frozenset[str]
    handler_url: str = ""  # install callback (API-only app: POSTed right after install, §7.3)


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

    @property
    def features(self) -> frozenset[str]:
        return PLAN_FEATURES[self.plan]

    @property
    def client_endpoint(self) -> str:
        return f"{self.base_url}/rest/"
