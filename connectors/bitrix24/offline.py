"""The offline-event queue of one portal, seen from one connector key.

Bitrix24 keeps one row per changed object for every app that bound the event offline (facts §2.1,
§2.11). The at-least-once protocol (facts §2.14): `reserve` (``event.offline.get clear=0``, rows get
a ``process_id`` and are hidden from other readers), process, then `ack`
(``event.offline.clear process_id=P``); after a crash, `reread` the reservations the journal knows
and `find_orphans` for those it never recorded. Failing objects go to the error lane with `fail`
and come back through `reserve_errors`.

Without the ``rest_offline_extended`` feature ``clear=0`` is refused (403 WRONG_LICENSE, facts
§2.2): the queue then drains with ``clear=1``, rows are gone once read, and every such result is
flagged ``at_most_once`` and warned about, for reconciliation to repair what a crash loses.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from connectors.bitrix24.batch import MAX_COMMANDS, BatchResult, Command, in_groups, result_ref
from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.entities import EntityKind, EntityRegistry
from connectors.bitrix24.errors import ApiError, MalformedResponse, TransportError
from connectors.bitrix24.lookups import FEATURES, LookupCache, fresh
from connectors.bitrix24.queue_rows import QueueEvent

log = logging.getLogger(__name__)

ROWS_PER_CALL = 50  # event.offline.get limit per sub-call; 50 sub-calls -> 2,500 rows per request
ROWS_PER_BATCH = ROWS_PER_CALL * MAX_COMMANDS
# One row over 50 in a reserve batch's last sub-call tells a full queue from one that ran dry
# (`ReserveResult.exhausted`). ``limit`` has no upper bound in the source (facts §2.7); a portal
# that capped it at 50 would only make a full batch look dry, and the next run takes the rest.
PROBE_ROWS = 1
MESSAGE_ID_LENGTH = 32  # event.offline.clear refuses other lengths (facts §2.9)
FAIL_ATTEMPTS = 3
FEATURE_OFFLINE_EXTENDED = "rest_offline_extended"
FEATURE_AUTH_CONNECTOR = "rest_auth_connector"
FEATURES_TTL_S = 3600.0  # a plan change (upgrade, expiry) is picked up within the hour


class DegradedDelivery(UserWarning):
    """The portal's plan lacks extended offline events: rows are deleted when read (clear=1)."""


@dataclass(frozen=True)
class Features:
    offline_extended: bool  # clear=0 reservations (at-least-once)
    auth_connector: bool  # a connector key on calls: own writes do not come back, separate queue


@dataclass(frozen=True)
class Reservation:
    process_id: str | None  # None when drained with clear=1: nothing to ack
    events: tuple[QueueEvent, ...]


@dataclass(frozen=True)
class ReserveResult:
    reservations: tuple[Reservation, ...]
    at_most_once: bool  # True in clear=1 degrade mode
    requested: int  # rows asked for
    failures: tuple[ApiError, ...] = ()  # sub-calls that reserved nothing (others succeeded)

    @property
    def events(self) -> list[QueueEvent]:
        return [event for reservation in self.reservations for event in reservation.events]

    @property
    def process_ids(self) -> tuple[str, ...]:
        return tuple(r.process_id for r in self.reservations if r.process_id is not None)

    @property
    def exhausted(self) -> bool:
        """Fewer rows came back than were asked for: the queue had nothing more at that moment."""
        return len(self.events) < self.requested


@dataclass(frozen=True)
class QueuePeek:
    depth: int  # rows in this lane, reserved ones included (they still await an ack)
    head: QueueEvent | None  # the oldest row by ID


@dataclass(frozen=True)
class BindResult:
    bound: tuple[str, ...]  # newly bound event names
    already_bound: tuple[str, ...]


_features_cache: dict[str, tuple[float, Features]] = {}
_features_lock = threading.Lock()


class OfflineQueue:
    """Reserve, re-read, acknowledge and fail rows of the queue selected by ``connector``."""

    def __init__(self, client: Bitrix24Client, connector: str = "", cache: LookupCache | None = None) -> None:
        self.client = client
        self.requested_connector = connector
        self.cache = cache
        self._warned_connector = False

    def __repr__(self) -> str:
        return f"OfflineQueue(portal={self.client.portal!r}, connector={self.requested_connector!r})"

    def features(self, *, refresh: bool = False) -> Features:
        """The plan features that shape the protocol (feature.get), asked at most once an hour.

        Kept in this process per endpoint and, when the queue has a ``cache``, in that cache for the
        other processes of the portal (`connectors.bitrix24.lookups`)."""
        features = None if refresh else self.known_features()
        if features is None:
            features = features_from(self.client.batch(feature_commands()))
            if self.cache is not None:
                self.cache.put(FEATURES, asdict(features))
            self.remember(features)
        return features

    def known_features(self) -> Features | None:
        """The plan features if this process or the cache knows them (younger than an hour), else
        None; never asks the portal."""
        # Keyed by where the calls go: two portals may share a name in different installations.
        key = self.client.credentials.grant().endpoint
        with _features_lock:
            cached = _features_cache.get(key)
        if cached and time.monotonic() - cached[0] < FEATURES_TTL_S:
            return cached[1]
        stored = None if self.cache is None else fresh(self.cache, FEATURES)
        if stored is None:
            return None
        features = Features(**stored)
        self.remember(features)
        return features

    def remember(self, features: Features) -> None:
        """Take ``features`` asked elsewhere (a look-up batch) as fresh for this process."""
        with _features_lock:
            _features_cache[self.client.credentials.grant().endpoint] = (time.monotonic(), features)

    def extended_mode(self) -> bool:
        return self.features().offline_extended

    @property
    def connector(self) -> str:
        """The connector key actually used: "" where the plan does not allow ``auth_connector``."""
        if self.requested_connector and not self.features().auth_connector:
            if not self._warned_connector:
                self._warned_connector = True
                log.warning("portal %s: the plan lacks %s; using the queue without a connector key",
                            self.client.portal, FEATURE_AUTH_CONNECTOR)
            return ""
        return self.requested_connector

    def assumed_connector(self) -> str:
        """The connector key for calls sent before the features are known: `connector` if they are
        cached, else the key asked for. A ``feature.get`` in the same batch tells whether it held:
        if `connector` differs afterwards, the portal refused those calls (``WRONG_LICENSE``, facts
        §2.2) and they must be sent again."""
        return self.connector if self.known_features() is not None else self.requested_connector

    def bind(self, kinds: Iterable[EntityKind]) -> BindResult:
        """Bind every event of ``kinds`` offline with our connector key; bound ones are left alone.

        Reads ``event.get`` first, then binds what is missing (two requests). `bind_commands` sends
        the binds blind instead, to ride in a batch that goes out anyway."""
        present = self.bound_offline(self.client.call("event.get").result)
        commands = self.bind_commands(kinds, skip=present)
        result = self.bound_from(commands, self.client.batch_all(commands))
        wanted = {name.upper() for kind in kinds for name in kind.bind_events}
        return BindResult(result.bound, tuple(sorted(present & wanted)) + result.already_bound)

    def bound_offline(self, handlers: Any) -> set[str]:
        """Event names an ``event.get`` answer shows bound offline with this queue's connector key
        (facts §2.5: offline rows carry ``connector_id`` and ``offline: 1``)."""
        connector = self.connector
        return {
            str(row.get("event", "")).upper() for row in (handlers if isinstance(handlers, list) else [])
            if isinstance(row, Mapping) and str(row.get("offline", "0")) in ("1", "True", "true")
            and str(row.get("connector_id") or "") == connector
        }

    def bind_commands(self, kinds: Iterable[EntityKind], *, skip: Iterable[str] = (),
                      connector: str | None = None) -> dict[str, Command]:
        """``event.bind`` (offline, our connector key) for every event of ``kinds`` not in ``skip``.

        Binding an event that is bound already is refused with "Handler already binded" and changes
        nothing (facts §2.3), so these may be sent without reading ``event.get`` first."""
        return self.bind_event_commands((name for kind in kinds for name in kind.bind_events), skip=skip,
                                        connector=connector)

    def bind_event_commands(self, names: Iterable[str], *, skip: Iterable[str] = (),
                            connector: str | None = None) -> dict[str, Command]:
        """``event.bind`` (offline) for each event name not in ``skip``, keyed ``bind_<NAME>`` for
        `bound_from`; with ``connector`` (e.g. `assumed_connector`) as the key, else `connector`."""
        connector = self.connector if connector is None else connector
        skipped = {name.upper() for name in skip}
        wanted = [name for name in dict.fromkeys(name.upper() for name in names) if name not in skipped]
        return {f"bind_{name}": Command("event.bind", self._with_connector(
            {"event": name, "event_type": "offline"}, connector)) for name in wanted}

    @staticmethod
    def bound_from(commands: Mapping[str, Command], outcome: BatchResult) -> BindResult:
        """What the `bind_commands` in ``outcome`` did; raises any refusal other than "already bound"."""
        bound, already = [], []
        for key in commands:
            name = key.removeprefix("bind_")
            error = outcome.errors.get(key)
            if error is None:
                outcome.result(key)  # a command the batch did not answer raises here
                bound.append(name)
            elif "already" in error.description.lower():
                already.append(name)  # "Handler already binded" (facts §2.3)
            else:
                raise error
        return BindResult(tuple(bound), tuple(already))

    def peek(self, *, error_lane: bool = False) -> QueuePeek:
        """Depth and head in one read-only call (event.offline.list: ``total`` is the depth)."""
        params = self._with_connector({"filter": {"ERROR": 1 if error_lane else 0}, "order": {"ID": "ASC"},
                                       "start": 0}, self.connector)
        response = self.client.call("event.offline.list", params)
        rows = _rows(response.result, "event.offline.list")
        head = QueueEvent.from_row(rows[0]) if rows else None
        depth = response.total if response.total is not None else len(rows)
        return QueuePeek(depth, head)

    def reserve(self, max_rows: int = ROWS_PER_BATCH, *, probe: bool = True) -> ReserveResult:
        """Reserve up to ``max_rows`` (one more with ``probe``): 2,500 per request (50 sub-calls of
        50 rows); more rows take more requests, stopping early once the queue runs dry. The probe
        row tells a full queue from a dry one (`ReserveResult.exhausted`); a caller that stops at
        ``max_rows`` anyway leaves it out and gets at most ``max_rows``."""
        return self._take(max_rows, error_lane=False, probe=probe)

    def reserve_errors(self, max_rows: int = ROWS_PER_BATCH, *, probe: bool = True) -> ReserveResult:
        """Reserve rows of the error lane (``error=1``) for another attempt (``probe`` as in `reserve`)."""
        return self._take(max_rows, error_lane=True, probe=probe)

    def reread(self, process_id: str) -> Reservation:
        """The rows still reserved under ``process_id`` (after a crash), without clearing them."""
        return self.reread_all([process_id])[0]

    def reread_all(self, process_ids: Iterable[str], *, error_lane: bool = False) -> list[Reservation]:
        """Re-read several reservations, 50 per request. Reservations taken from the error lane are
        only visible with ``error_lane`` (``get`` filters on ERROR, facts §2.7)."""
        ids = list(dict.fromkeys(process_ids))
        connector = self.connector
        # A reservation holds at most 51 rows (the probe sub-call's); older ones 50.
        params: dict[str, Any] = {"clear": 0, "limit": ROWS_PER_CALL + PROBE_ROWS,
                                  **({"error": 1} if error_lane else {})}
        reservations: list[Reservation] = []
        for group in in_groups(ids, MAX_COMMANDS):
            commands = {f"reread{index}": Command("event.offline.get", self._with_connector(
                {"process_id": pid, **params}, connector))
                for index, pid in enumerate(group)}
            outcome = self.client.batch(commands)
            for key, pid in zip(commands, group, strict=True):
                reservations.append(_reservation(outcome.result(key), pid))
        return reservations

    def find_orphans(self, known_process_ids: Iterable[str]) -> tuple[str, ...]:
        """Process ids holding rows in the queue that the caller's journal does not know.

        They come from a crash between a reserve response and the journal write (DESIGN §3).
        event.offline.list shows PROCESS_ID (facts §2.8); the reserved rows are listed first.
        Another live worker's reservations look the same: call this only while no other worker
        drains this portal's queue.
        """
        known = set(known_process_ids)
        connector = self.connector
        base = {"filter": {">PROCESS_ID": ""}, "order": {"PROCESS_ID": "DESC", "ID": "ASC"}}
        first = self.client.call("event.offline.list", self._with_connector({**base, "start": 0}, connector))
        pages = [_rows(first.result, "event.offline.list")]
        total = first.total or 0
        offsets = list(range(ROWS_PER_CALL, total, ROWS_PER_CALL))
        for group in in_groups(offsets, MAX_COMMANDS):
            commands = {f"at{offset}": Command("event.offline.list", self._with_connector(
                {**base, "start": offset}, connector)) for offset in group}
            outcome = self.client.batch(commands)
            pages.extend(_rows(outcome.result(key), "event.offline.list") for key in commands)
        found = dict.fromkeys(str(row.get("PROCESS_ID") or "") for page in pages for row in page)
        return tuple(pid for pid in found if pid and pid not in known)

    def queued_objects(self, registry: EntityRegistry) -> dict[str, frozenset[int]]:
        """Ids of the objects that have a row in this connector's queue, by `EntityKind.key`.

        Read-only (``event.offline.list``, facts §2.8): rows reserved or not, in the error lane or
        not, i.e. every change still on its way to the warehouse. Keyset pages of 50 rows by ``>ID``,
        50 pages per request chained with ``$result[...]`` (facts §5); a short page ends the listing.
        Rows no registered kind understands are left out.
        """
        connector = self.connector
        queued: dict[str, set[int]] = {}
        last_id = 0
        while True:
            commands = {}
            for index in range(MAX_COMMANDS):
                lower = last_id if index == 0 else result_ref(f"at{index - 1}", ROWS_PER_CALL - 1, "ID")
                commands[f"at{index}"] = Command("event.offline.list", self._with_connector(
                    {"filter": {">ID": lower}, "order": {"ID": "ASC"}, "start": -1}, connector))
            outcome = self.client.batch(commands)
            for key in commands:
                rows = _rows(outcome.result(key), "event.offline.list")
                for row in rows:
                    target = registry.resolve(str(row.get("EVENT_NAME", "")), row.get("EVENT_DATA"))
                    if target.kind is not None and target.entity_id is not None:
                        queued.setdefault(target.kind.key, set()).add(target.entity_id)
                if len(rows) < ROWS_PER_CALL:
                    return {key: frozenset(ids) for key, ids in queued.items()}
                last_id = int(rows[-1]["ID"])

    def ack(self, process_ids: Iterable[str],
            loaded: Mapping[str, Sequence[QueueEvent]] | None = None) -> int:
        """Acknowledge reservations (event.offline.clear, 50 per request); returns how many.

        A process id in ``loaded`` is acknowledged message by message: only the rows listed there
        are deleted, so whatever else it holds (a message that failed) stays in the queue (DESIGN
        §3 step 7). An empty list clears nothing. Rows are named by ``message_id`` (facts §2.9: each
        exactly 32 characters, else 400) or, when a producer supplied other ids, by row ``id``; never
        both (facts §10.4). Clearing is idempotent, so the request is safe to repeat.
        """
        partial = dict(loaded or {})
        ids = [pid for pid in dict.fromkeys(process_ids) if pid]
        connector = self.connector
        commands: dict[str, Command] = {}
        for index, pid in enumerate(ids):
            params: dict[str, Any] = {"process_id": pid}
            if pid in partial:
                rows = partial[pid]
                if not rows:
                    continue
                messages = [event.message_id for event in rows]
                if all(len(message) == MESSAGE_ID_LENGTH for message in messages):
                    params["message_id"] = list(dict.fromkeys(messages))
                else:
                    params["id"] = [event.row_id for event in rows]
            commands[f"ack{index}"] = Command("event.offline.clear", self._with_connector(params, connector))
        outcome = self.client.batch_all(commands)
        for key in commands:
            outcome.result(key)  # raises the first failure; the others are already cleared
        return len(ids)

    def fail(self, process_id: str, message_ids: Iterable[str], *, error_lane: bool = False) -> None:
        """Move these messages of a reservation to the error lane (event.offline.error).

        Not repeated blindly after a fault that leaves the outcome unknown: besides moving the rows,
        the portal deletes other copies of the messages (facts §2.10), so the reservation is re-read
        first and the call is repeated only for messages still reserved in the normal lane. Rows of
        an error-lane reservation may stay reserved whatever the answer (facts §2.10, unsettled);
        the caller keeps that reservation journalled and re-reads it.

        Raises the last `TransportError`/`MalformedResponse` if three tries leave messages behind.
        """
        messages = list(dict.fromkeys(message_ids))
        for attempt in range(1, FAIL_ATTEMPTS + 1):
            if not messages:
                return
            try:
                self.client.call("event.offline.error", self._with_connector(
                    {"process_id": process_id, "message_id": messages}, self.connector))
                return
            except (TransportError, MalformedResponse) as error:
                if error_lane or attempt == FAIL_ATTEMPTS:
                    raise
                log.warning("portal %s: event.offline.error answered nothing readable (%s); checking the "
                            "reservation before repeating it", self.client.portal, error)
                still = {event.message_id for event in self.reread(process_id).events}
                messages = [message for message in messages if message in still]

    def _take(self, max_rows: int, *, error_lane: bool, probe: bool = True) -> ReserveResult:
        if max_rows <= 0:
            raise ValueError("max_rows must be positive")
        extended = self.extended_mode()
        if not extended:
            message = (f"portal {self.client.portal}: no {FEATURE_OFFLINE_EXTENDED} on this plan; "
                       "draining with clear=1 (at-most-once: a crash now loses changes until reconciliation)")
            warnings.warn(message, DegradedDelivery, stacklevel=3)
            log.warning(message)
        connector = self.connector
        params: dict[str, Any] = {"clear": 0 if extended else 1, "limit": ROWS_PER_CALL}
        if error_lane:
            params["error"] = 1
        reservations: list[Reservation] = []
        failures: list[ApiError] = []
        requested = 0
        while requested < max_rows:
            calls = min(MAX_COMMANDS, math.ceil((max_rows - requested) / ROWS_PER_CALL))
            # The last sub-call asks what is left of max_rows (plus the probe row).
            last = min(ROWS_PER_CALL, max_rows - requested - (calls - 1) * ROWS_PER_CALL) + (PROBE_ROWS if probe else 0)
            asked = (calls - 1) * ROWS_PER_CALL + last
            requested += asked
            taken = self._take_batch(calls, last, params, connector, extended, failures)
            reservations.extend(taken)
            if sum(len(r.events) for r in taken) < asked or failures:
                break  # the queue ran dry (or a sub-call failed): no point asking again now
        if failures and not reservations:
            raise failures[0]
        for failure in failures:
            log.warning("portal %s: a reserve sub-call failed: %s", self.client.portal, failure)
        return ReserveResult(tuple(reservations), not extended, requested, tuple(failures))

    def _take_batch(self, calls: int, last: int, params: dict[str, Any], connector: str, extended: bool,
                    failures: list[ApiError]) -> list[Reservation]:
        command = Command("event.offline.get", self._with_connector(dict(params), connector))
        commands = {f"take{index}": command for index in range(calls)}
        # The last sub-call asks ``last`` rows (one more than 50 with the probe): a batch that fills
        # it proves the queue holds more, one that does not proves it ran dry, so no empty reserve
        # is sent to find out.
        commands[f"take{calls - 1}"] = Command("event.offline.get", self._with_connector(
            {**params, "limit": last}, connector))
        outcome = self.client.batch(commands)
        failures.extend(outcome.errors.values())
        reservations = []
        for key in commands:
            if key in outcome.results and key not in outcome.errors:
                reservation = _reservation(outcome.results[key], None)
                if reservation.events:
                    # Each sub-call reserved its own rows under its own process_id (facts §2.7).
                    reservations.append(reservation if extended else Reservation(None, reservation.events))
        return reservations

    @staticmethod
    def _with_connector(params: dict[str, Any], connector: str) -> dict[str, Any]:
        if connector:
            params["auth_connector"] = connector
        return params


def feature_commands() -> dict[str, Command]:
    """The ``feature.get`` commands `features_from` reads (facts §2.15)."""
    return {code: Command("feature.get", {"CODE": code}) for code in (FEATURE_OFFLINE_EXTENDED, FEATURE_AUTH_CONNECTOR)}


def features_from(outcome: BatchResult) -> Features:
    """`Features` from a batch holding `feature_commands` (a failed command reads as "missing")."""
    found = {code: _feature_enabled(code, outcome.results.get(code), outcome.errors.get(code))
             for code in (FEATURE_OFFLINE_EXTENDED, FEATURE_AUTH_CONNECTOR)}
    return Features(found[FEATURE_OFFLINE_EXTENDED], found[FEATURE_AUTH_CONNECTOR])


def _feature_enabled(code: str, result: Any, error: ApiError | None) -> bool:
    if error is not None:
        log.warning("feature.get %s failed (%s); assuming the feature is missing", code, error)
        return False
    value = str(result.get("value", "")) if isinstance(result, Mapping) else ""
    # On-premise answers "<lang>_selfhosted": every feature is on there (facts §2.15).
    return value == "Y" or value.endswith("_selfhosted")


def _reservation(result: Any, process_id: str | None) -> Reservation:
    if not isinstance(result, Mapping) or not isinstance(result.get("events", []), list):
        raise MalformedResponse("event.offline.get", 200, "result has no events array", repr(result)[:200])
    pid = result.get("process_id") or process_id
    events = tuple(QueueEvent.from_row(row, pid) for row in result.get("events") or [])
    return Reservation(pid, events)


def _rows(result: Any, method: str) -> list[dict]:
    if result in (None, []):
        return []
    if not isinstance(result, list) or not all(isinstance(row, Mapping) for row in result):
        raise MalformedResponse(method, 200, "expected an array of rows", repr(result)[:200])
    return result
