"""A portal installation as the state store keeps it, and the rule for portal keys."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import datetime

from connectors.state.errors import InvalidPortalKey

# Hostname-like, optionally with a port (the emulator listens on 127.0.0.1:<port>): the key is a
# Dagster dynamic partition key, which must not hold ',', '|' or whitespace (dagster-notes).
_PORTAL_KEY = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(?::[0-9]{1,5})?$")


def check_portal_key(key: str) -> str:
    if not isinstance(key, str) or not _PORTAL_KEY.fullmatch(key):
        raise InvalidPortalKey(f"not a hostname-like portal key: {key!r}")
    return key


class PortalStatus(enum.StrEnum):
    ACTIVE = "active"
    UNINSTALLED = "uninstalled"


@dataclass(frozen=True)
class Portal:
    """One app installation. ``member_id`` is stable across domain renames (facts §8);
    ``application_token`` is the secret inbound events are checked against (facts §7.4)."""

    key: str
    member_id: str
    domain: str
    client_endpoint: str
    application_token: str = field(repr=False)
    status: PortalStatus = PortalStatus.ACTIVE
    installed_at: datetime | None = None

    def __post_init__(self) -> None:
        check_portal_key(self.key)

    @property
    def install_stamp(self) -> str:
        """This install, as the sensor and the runs record it: ``installed_at`` in ISO 8601, or
        ``"unknown"`` when the install time was not recorded."""
        return self.installed_at.isoformat() if self.installed_at else "unknown"


@dataclass
class SensorPortalState:
    """What the Dagster sensor remembers about one portal between ticks (kept in the state store, so
    the sensor's own cursor stays small and constant in size however many portals there are).

    Times are Unix seconds (``time.time()``); ``None`` means never."""

    portal: str
    bootstrapped: str | None = None  # installed_at (ISO) of the install whose full resync was requested
    pending: bool = False  # a push signal arrived; peek it when its portal has no run in flight
    polled_at: float | None = None  # last peek of its queue
    confirmed_at: float | None = None  # last time an empty queue renewed its sync watermark
    launches: int = 0  # sync runs requested so far: part of the run key, so a failed run never blocks a retry
    resync_attempts: int = 0  # full resyncs asked again after Dagster's own retries gave up


@dataclass
class PortalProgress:
    """What a portal's runs last reported about it, for the sensor to judge whether a quiet portal is
    current (kept apart from `SensorPortalState`: runs write this, the sensor writes that).

    ``parked`` counts the messages waiting in its error lane after its latest run (None: no run has
    reported yet); ``resynced`` is the ``installed_at`` (ISO) of the install whose full resync
    completed (None: none has)."""

    portal: str
    parked: int | None = None
    resynced: str | None = None
