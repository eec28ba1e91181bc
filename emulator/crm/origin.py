"""Who made a CRM change: the writer's user, app and connector decide which queues get a row."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Origin:
    """``client_id`` is None for UI users, webhooks and the activity generator; ``auth_connector`` is the
    connector key the app passed with its write (facts §2.12). Re-exported as ``emulator.events.Origin``."""

    user_id: int
    client_id: str | None = None
    auth_connector: str = ""
