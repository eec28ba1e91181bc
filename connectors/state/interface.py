"""The state store's one interface: portals, OAuth tokens and push signals, shared by processes.

The Dagster sensor, the runs and the small HTTP receiver all open the same store; every write is
one short transaction, so they can work at the same time.
"""

from __future__ import annotations

import hmac
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from datetime import datetime
from types import TracebackType

from connectors.state.portal import Portal, PortalProgress, PortalStatus, SensorPortalState


class StateStore(ABC):
    """Portals, tokens and push signals; `open_state_store` picks SQLite or PostgreSQL."""

    # -- portals --------------------------------------------------------------------------------

    @abstractmethod
    def save_portal(self, portal: Portal) -> None:
        """Insert or replace a portal (an install or re-install)."""

    @abstractmethod
    def portal(self, key: str) -> Portal | None: ...

    @abstractmethod
    def portal_by_member_id(self, member_id: str) -> Portal | None:
        """The portal installed under ``member_id``, preferring an active, then the latest install."""

    @abstractmethod
    def portals(self, status: PortalStatus | None = PortalStatus.ACTIVE) -> list[Portal]:
        """Portals with a status (all of them with None), by key."""

    @abstractmethod
    def mark_uninstalled(self, key: str) -> None: ...

    # -- the sensor's per-portal state -------------------------------------------------------

    @abstractmethod
    def sensor_states(self) -> dict[str, SensorPortalState]:
        """Every portal's sensor state, ``{portal key: state}`` (portals never seen are absent)."""

    @abstractmethod
    def save_sensor_states(self, states: list[SensorPortalState]) -> None:
        """Insert or replace these portals' sensor states, in one transaction."""

    @abstractmethod
    def forget_sensor_states(self, portals: list[str]) -> None:
        """Drop the sensor state of portals that are gone (uninstalled); their data stays."""

    # -- what runs report about each portal ------------------------------------------------------

    @abstractmethod
    def record_progress(self, portal: str, *, parked: int | None = None, resynced: str | None = None) -> None:
        """Note what a run of ``portal`` found: how many messages its error lane holds now, and/or
        that the full resync of the install ``resynced`` (its ``installed_at``, ISO) completed.
        An argument left None keeps the stored value."""

    @abstractmethod
    def progress(self) -> dict[str, PortalProgress]:
        """Every portal's `PortalProgress`, ``{portal key: progress}`` (portals no run reported on are absent)."""

    # -- drain claims: at most one drain of a portal's queue at any time, across runs -------------

    @abstractmethod
    def claim_drain(self, portal: str, owner: str, owner_is_alive: Callable[[str], bool]) -> bool:
        """Claim the right to drain ``portal``'s queue for ``owner`` (a Dagster run id, a process).

        True when the claim is ``owner``'s now: it was free, already ``owner``'s, or held by an owner
        that ``owner_is_alive`` says is gone (a run that failed or was killed), taken over atomically.
        False while another live owner holds it. Two runs draining one queue would each see the
        other's reservations as orphans (DESIGN §3)."""

    @abstractmethod
    def release_drain(self, portal: str, owner: str) -> None:
        """Give up ``owner``'s claim on ``portal`` (nothing happens if another owner holds it)."""

    def verify_application_token(self, key: str, application_token: str) -> bool:
        """Whether an inbound event carries the portal's application token (facts §7.4)."""
        portal = self.portal(key)
        if portal is None or not portal.application_token:
            return False
        return hmac.compare_digest(portal.application_token.encode(), application_token.encode())

    # -- tokens ---------------------------------------------------------------------------------

    @abstractmethod
    def load_token(self, portal: str) -> dict | None: ...

    @abstractmethod
    def save_token(self, portal: str, token: dict) -> None:
        """Replace the portal's token JSON in one transaction: readers see the old or the new pair."""

    @abstractmethod
    def tokens_saved_before(self, cutoff: datetime) -> list[str]:
        """Active portals whose token pair was last saved before ``cutoff`` (oldest first): the ones
        whose refresh token has gone unused longest (facts §7.2, §8: it expires unused)."""

    @abstractmethod
    def refresh_lock(self, portal: str, timeout: float = 60.0) -> AbstractContextManager[None]:
        """A cross-process lock per portal, held around a token refresh so only one process refreshes
        (Bitrix24 rotates the refresh token on use; facts §7.2). Re-read the token inside it.
        Raises `LockTimeout` after ``timeout`` seconds of waiting."""

    @property
    def tokens(self) -> PortalTokens:
        """This store as the source side's ``TokenStore`` (``load``/``save``) plus ``refresh_lock``."""
        return PortalTokens(self)

    # -- push signals ---------------------------------------------------------------------------

    @abstractmethod
    def record_signal(self, portal: str, received_at: datetime | None = None) -> None:
        """Note that the portal pushed ONOFFLINEEVENT (facts §2.13): it has queued changes."""

    @abstractmethod
    def signals_since(self, cursor: int | None) -> tuple[dict[str, datetime], int]:
        """Portals signalled after ``cursor`` -> their latest signal time, and the new cursor.

        Each signal moves its portal to the head of one sequence, so a reader holding a cursor
        reads only portals signalled since, however many portals exist."""

    # -- request buckets ------------------------------------------------------------------------

    @abstractmethod
    def reserve_request(self, portal: str, *, capacity: float, drain_per_s: float) -> float:
        """Take one slot of the portal's request bucket; return seconds to wait before sending.

        The bucket mirrors the portal's leaky bucket (facts §6.1: +1 per request, drains
        ``drain_per_s`` per second, 503 ``QUERY_LIMIT_EXCEEDED`` beyond the burst), shared by
        every process that calls the portal. One atomic update per call, on that portal's row
        only; the caller sleeps the returned seconds (a reservation in the future) holding nothing.
        Raises `InvalidPortalKey` for a key that is not hostname-like."""

    @abstractmethod
    def saturate_requests(self, portal: str, *, capacity: float, drain_per_s: float) -> None:
        """The portal answered 503: someone outside this store spends its bucket too, so count it
        as full (level ``capacity``, if lower) from now on."""

    # -- portal cache ---------------------------------------------------------------------------

    @abstractmethod
    def cached(self, portal: str, key: str) -> tuple[object, datetime] | None:
        """The JSON value cached for ``(portal, key)`` and when it was fetched (UTC), or None.

        Holds what the portal answers slowly changing look-ups with (field descriptions, smart-process
        types, plan features), so runs in separate processes do not each ask again."""

    @abstractmethod
    def cache(self, portal: str, key: str, value: object, fetched_at: datetime | None = None) -> None:
        """Store a JSON-serialisable ``value`` for ``(portal, key)``, replacing any older one."""

    @abstractmethod
    def forget_cached(self, portal: str, keys: Iterable[str] | None = None) -> None:
        """Drop cached values of ``portal`` (those named in ``keys``, or all): they are asked again."""

    # -- lifecycle ------------------------------------------------------------------------------

    @abstractmethod
    def close(self) -> None:
        """Release what the store holds open."""

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


class PortalTokens:
    """Adapter with the ``TokenStore`` protocol of ``connectors.bitrix24.auth``."""

    def __init__(self, store: StateStore) -> None:
        self._store = store

    def __repr__(self) -> str:
        return f"PortalTokens({self._store!r})"

    def load(self, portal: str) -> dict | None:
        return self._store.load_token(portal)

    def save(self, portal: str, token: dict) -> None:
        self._store.save_token(portal, token)

    def refresh_lock(self, portal: str, timeout: float = 60.0) -> AbstractContextManager[None]:
        return self._store.refresh_lock(portal, timeout)

