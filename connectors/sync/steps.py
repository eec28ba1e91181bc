"""The CDC loop of one portal as four steps: reserve -> fetch -> commit -> ack (DESIGN §3).

Each step reads the previous step's manifest and writes its own, so an orchestrator can run them
as separate ops (or in one process) and a crash between any two leaves a state the next run's
`reserve` recovers from:

* reserve  opens the run in the sync log, recovers (ack what was loaded but not acked; re-read
           reservations the journal holds; if the last run never finished, find orphans the
           journal never saw), then reserves new rows, journalling every ``process_id`` as
           *reserved* before anything is processed; events are staged to disk as they arrive;
* fetch    plans (coalesces rows to one action per object) and re-reads current state, 2,500
           entities per request, into Arrow IPC chunks; ids that do not come back become tombstones;
           objects that fail for another reason are moved to the error lane right here, so a later
           ack of their reservation cannot drop them;
* commit   upserts a chunk per transaction, then one transaction: the last chunk, tombstones,
           error lane, journal -> *loaded* (upserts are idempotent, so a crash in between is
           repaired by the next run re-applying the same reservations);
* ack      ``event.offline.clear`` for the committed reservations, journal -> *acked*, and the
           run's row of the sync log closed with its numbers.

Queue rows that say reference data changed (a user field, a list item, a smart-process type, a new
user: `connectors.bitrix24.reference.REFERENCE_EVENTS`) carry no CRM object to re-read: fetch reads
every dimension for them (two requests, once per run) and stages it, commit replaces the dimensions
in the transaction that marks the reservations *loaded* (then rebuilds the analysts' views in one of
its own), so a row is never acknowledged before its refresh is in the warehouse, and a crash before
that commit leaves the rows reserved for the next run to read and refresh again.

A full resync (bootstrap) uses the same steps: fetch binds the events (in the request that reads
the first page of every kind, binds first) and scans every kind, commit also tombstones ids the scan
did not see, ack has nothing to clear.

Requests (issue 13): look-ups (types, fields, features) come from the portal cache
(`PortalSync.refresh`), so a change run of up to 2,500 changes costs reserve + fetch + clear. A full
resync asks the missing ones in its first scan request instead, so N entities of the standard kinds
on a fresh portal cost ceil(N / 2,500) + 1 requests (smart-process types, found from that request's
answer, are bound and counted in the next one, in the room the pages leave).
Memory is bounded by one chunk: events go to disk as reserved and are read back as columns.
"""

from __future__ import annotations

import logging
import shutil
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from pyarrow import feather

from connectors.bitrix24 import (
    Bitrix24Client,
    ChangePlan,
    EntityKind,
    FetchResult,
    KindPlan,
    MalformedRecord,
    MalformedResponse,
    NotFound,
    QueueEvent,
    Reservation,
    TransportError,
    fetch_by_ids,
    fetch_changes,
    frame_and_coercions,
    schema_from_fields,
)
from connectors.bitrix24.batch import BatchResult, Command
from connectors.bitrix24.entities import STANDARD_KINDS, Action, smart_process_kind, smart_process_type_of_table
from connectors.bitrix24.errors import (
    ApiError,
    Bitrix24Error,
    Forbidden,
    InsufficientScope,
    InvalidArgument,
    MethodNotFound,
)
from connectors.bitrix24.fetch import scan_kinds
from connectors.bitrix24.lookups import TYPES, invalidated_by
from connectors.bitrix24.redaction import redact
from connectors.bitrix24.reference import is_reference_event, load_reference
from connectors.sync.failpoints import failpoint
from connectors.sync.heap import give_back_freed_memory
from connectors.sync.portal import PortalSync
from connectors.sync.staging import (
    CHUNK_SUFFIX,
    Committed,
    Fetched,
    Reserved,
    SyncMode,
    TableOutcome,
    TablePart,
    append_events,
    iter_events,
    read_json,
    read_staged_dimensions,
    run_staging_dir,
    schema_from_json,
    schema_to_json,
    stage_dimensions,
    sweep_siblings,
    write_frame,
    write_json,
)
from connectors.tables import TableSchema
from connectors.warehouse import FailedMessage, JournalStatus, ParkedStatus, SyncRun, Transaction
from connectors.warehouse.analytics import rebuild_analytics
from connectors.warehouse.errors import WarehouseError
from connectors.warehouse.reference import ensure_reference_tables, write_dimensions
from connectors.warehouse.sql_warehouse import SqlWarehouse

log = logging.getLogger(__name__)

CHUNK = 2_500  # entities per fetch request and per staged chunk (50 commands x 50 rows)

# The modes a run is started with; reconcile only commits (connectors.sync.reconcile).
RUN_MODES = (SyncMode.CHANGES, SyncMode.FULL_RESYNC, SyncMode.ERROR_LANE)
JOURNAL_KEEP = timedelta(days=7)  # acked journal entries kept for inspection, then pruned
RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"  # `SyncRun.status`
REREAD_GROUP = 50 * 20  # reservations re-read per round after a crash (20 requests), staged before the next
# Queue rows a run holds at once (its event index and plan grow with them, ~200 bytes a row at the
# peak); a run asked for more works through them in rounds (`run_rounds`). At 25,000 a round is a
# default run, and its 10 fetch requests of 2,500 stay well inside the 10,000-changes bound per round.
ROUND_EVENTS = 25_000


def run_mode(mode: SyncMode | str) -> SyncMode:
    """``mode`` as a `SyncMode` a run can start with; raises `ValueError` naming the choices."""
    try:
        chosen = SyncMode(mode)
    except ValueError:
        chosen = None
    if chosen not in RUN_MODES:
        raise ValueError(f"unknown sync mode {mode!r}; expected one of {[m.value for m in RUN_MODES]}")
    return chosen


# --- reserve ---------------------------------------------------------------------------------


class _Staged:
    """The run's events file, appended to as reservations come in; only numbers stay in memory."""

    def __init__(self, sync: PortalSync, reserved: Reserved) -> None:
        self.sync, self.reserved = sync, reserved
        self.path = sync.staging_dir / "events.jsonl"
        self.path.write_text("")
        reserved.events_file = str(self.path)
        self.discarded_at = (_discarded_times(sync) if reserved.mode == SyncMode.ERROR_LANE else {})
        self.discarded: set[str] = set()

    def add(self, events: Sequence[QueueEvent]) -> None:
        append_events(self.path, events)
        self.reserved.event_count += len(events)
        if events:
            oldest = min(event.timestamp for event in events)
            current = self.reserved.oldest_event_at
            if current is None or oldest < datetime.fromisoformat(current):
                self.reserved.oldest_event_at = oldest.isoformat()
        for event in events:
            failed_at = self.discarded_at.get(event.message_id)
            if failed_at is not None and event.timestamp <= failed_at:
                self.discarded.add(event.message_id)


def reserve(sync: PortalSync, mode: SyncMode | str = SyncMode.CHANGES) -> Path:
    """Recover unfinished work, then reserve new rows; returns the manifest for `fetch`.

    Reserves at most ``min(sync.max_events, ROUND_EVENTS)`` new rows (a bigger backlog is the next
    round's or run's). Requests: one per 2,500 rows reserved (the last sub-call's extra row tells a
    full queue from a dry one, so no empty reserve is sent); recovery look-ups only after a run that
    did not finish. Raises `ValueError` for a mode a run cannot start with.
    """
    mode = run_mode(mode)
    before = _requests(sync)
    if mode is not SyncMode.FULL_RESYNC:
        # Whatever look-up is stale (features, types, fields) is asked now, in one request; a full
        # resync asks them in its first scan request instead (`_scan_all`).
        sync.refresh()
    reserved = Reserved(portal=sync.portal, mode=mode, run_id=sync.run_id,
                        started_at=datetime.now(UTC).isoformat())
    unfinished_run = _open_run(sync, reserved)
    if mode is SyncMode.FULL_RESYNC:
        # Binding happens in fetch, in the request that reads the first pages (binds first), with the
        # look-ups.
        reserved.requests = _requests(sync) - before
        return reserved.write(sync.staging_dir / "reserved.json")

    # Reference-data events the look-ups found unbound (a portal bound by an older release): one
    # batch, once; a full resync binds them with the CRM events instead.
    sync.bind_reference_events()
    staged = _Staged(sync, reserved)
    # A drain also takes back the reservations that kept failed messages (journalled *parked*).
    _recover(sync, reserved, staged, parked_too=mode is SyncMode.ERROR_LANE, orphans=unfinished_run)
    # At most one round's rows (the step-by-step jobs run one round; `run_rounds` the rest).
    limit = min(sync.max_events, ROUND_EVENTS)
    while reserved.event_count < limit:
        want = min(CHUNK, limit - reserved.event_count)
        # The probe row only helps a batch after which the run would ask again; the batch that
        # reaches the limit stops the run anyway, and without it the run's ids fill whole fetches.
        probe = reserved.event_count + want < limit
        try:
            take = sync.queue.reserve_errors if mode is SyncMode.ERROR_LANE else sync.queue.reserve
            result = take(want, probe=probe)
        except (TransportError, MalformedResponse) as error:
            # A reserve is not repeated blindly: the lost answer may have reserved rows under a
            # process_id we never saw. Find those reservations (read-only) and take them instead.
            log.warning("portal %s: a reserve answered nothing readable (%s); looking for the rows it "
                        "may have reserved", sync.portal, error)
            _adopt_orphans(sync, reserved, staged, error_lane=mode is SyncMode.ERROR_LANE)
            break
        reserved.at_most_once = reserved.at_most_once or result.at_most_once
        failpoint("after_reserve_response")
        if result.process_ids:
            counts = {r.process_id: len(r.events) for r in result.reservations if r.process_id}
            sync.warehouse.record_reserved(sync.portal, counts)
            reserved.process_ids.extend(counts)
        staged.add(result.events)
        if result.exhausted:
            break
    reserved.discarded = sorted(staged.discarded)
    # The reservations of any dead run are recovered (or none can be left): its files go now.
    for removed in sweep_siblings(sync.staging_dir, sync.keep_staging):
        log.info("portal %s: removed staging left by an earlier run: %s", sync.portal, removed.name)
    if reserved.at_most_once:
        log.warning("portal %s: DEGRADED delivery (no rest_offline_extended): %d rows were deleted from "
                    "the queue when read; schedule reconciliation", sync.portal, reserved.event_count)
    reserved.requests = _requests(sync) - before
    manifest = reserved.write(sync.staging_dir / "reserved.json")
    failpoint("after_reserve")
    return manifest


def _open_run(sync: PortalSync, reserved: Reserved) -> bool:
    """Write this run's row of the sync log; True if the portal's last run did not finish.

    Only such a run can have died between a reserve answer and its journal write, leaving rows
    reserved under a process id nobody knows (DESIGN §3 orphans); otherwise the portal need not be
    asked. A run without predecessor in the log (a new or an older warehouse) is checked too.
    """
    previous = sync.warehouse.runs(sync.portal, limit=1)
    unfinished = not previous or previous[0].status == RUNNING
    if previous and previous[0].status == RUNNING and previous[0].run_id != sync.run_id:
        sync.warehouse.log_run(replace(previous[0], status=FAILED, finished_at=datetime.now(UTC),
                                       error_summary="ended before its acknowledgement; recovered by "
                                                     f"run {sync.run_id}"))
    sync.warehouse.log_run(SyncRun(sync.run_id, sync.portal, datetime.fromisoformat(reserved.started_at or ""),
                                   status=RUNNING, mode=SyncMode(reserved.mode).value))
    return unfinished


def _recover(sync: PortalSync, reserved: Reserved, staged: _Staged, *, parked_too: bool, orphans: bool) -> None:
    journal = sync.warehouse.journal(sync.portal)
    loaded = [entry.process_id for entry in journal if entry.status is JournalStatus.LOADED]
    if loaded:
        # Committed before a crash, not yet acknowledged: the data is safe, clear the rows now.
        sync.queue.ack(loaded)
        sync.warehouse.mark_acked(sync.portal, loaded)
        reserved.acked_on_recovery = len(loaded)
    held = (JournalStatus.RESERVED, JournalStatus.PARKED) if parked_too else (JournalStatus.RESERVED,)
    unfinished = [entry.process_id for entry in journal if entry.status in held]
    if not unfinished and not orphans:
        return
    if not sync.queue.extended_mode():
        return
    found = list(sync.queue.find_orphans(entry.process_id for entry in journal)) if orphans else []
    if found:
        log.warning("portal %s: %d reservations not in the journal (crash before the journal write); "
                    "re-reading them", sync.portal, len(found))
        sync.warehouse.record_reserved(sync.portal, dict.fromkeys(found, 0))
    # A drain's reservation (crashed, or parked: its failed rows may still be reserved under it,
    # facts §2.10) holds error-lane rows; a change run's holds normal ones.
    for start in range(0, len(unfinished + found), REREAD_GROUP):
        group = (unfinished + found)[start:start + REREAD_GROUP]
        reservations = _reread_both_lanes(sync, group, error_lane=False)
        _take_over(sync, reserved, staged, reservations)
        reserved.recovered += len([r for r in reservations if r.events])


def _reread_both_lanes(sync: PortalSync, process_ids: Sequence[str], *, error_lane: bool) -> list[Reservation]:
    """Re-read reservations in the lane given, then the empty ones in the other lane.

    ``get`` filters on ERROR (facts §2.7), so a reservation of the other lane reads as empty: a
    change run that died holds normal rows, a drain that died holds error-lane rows. Only one
    empty in both lanes is finished; any other is taken over, whichever kind of run finds it.
    """
    reservations = sync.queue.reread_all(process_ids, error_lane=error_lane)
    empty = [r.process_id for r in reservations if not r.events and r.process_id]
    if not empty:
        return reservations
    return [r for r in reservations if r.events] + sync.queue.reread_all(empty, error_lane=not error_lane)


def _take_over(sync: PortalSync, reserved: Reserved, staged: _Staged, reservations: Sequence[Reservation]) -> None:
    """This run processes the rows still held by ``reservations``; empty ones are finished."""
    held = {r.process_id: len(r.events) for r in reservations if r.events and r.process_id}
    drained = [r.process_id for r in reservations if not r.events and r.process_id]
    sync.warehouse.record_reserved(sync.portal, held)
    reserved.process_ids.extend(held)
    if drained:
        # Nothing is reserved under these any more (cleared earlier, moved back to the error lane,
        # or expired after ~34 days, facts §2.11): there is nothing left to load for them.
        sync.warehouse.mark_acked(sync.portal, drained)
    staged.add([event for r in reservations for event in r.events])


def _adopt_orphans(sync: PortalSync, reserved: Reserved, staged: _Staged, *, error_lane: bool) -> None:
    if not sync.queue.extended_mode():
        return  # clear=1: whatever the lost answer held is gone; reconciliation repairs it
    orphans = list(sync.queue.find_orphans(entry.process_id for entry in sync.warehouse.journal(sync.portal)))
    if not orphans:
        return
    sync.warehouse.record_reserved(sync.portal, dict.fromkeys(orphans, 0))
    _take_over(sync, reserved, staged, _reread_both_lanes(sync, orphans, error_lane=error_lane))


def _discarded_times(sync: PortalSync) -> dict[str, datetime]:
    """Messages an operator discarded, with the portal time of their last failed occurrence.

    They are acknowledged without loading; a newer occurrence of the same message (a later change
    of the object moves its TIMESTAMP_X, facts §2.10) is not covered by the discard and is loaded.
    Both times come from the portal's clock, never ours."""
    return {entry.message_id: entry.last_event_at
            for entry in sync.warehouse.error_lane(sync.portal, ParkedStatus.DISCARDED)
            if entry.last_event_at is not None}


def _requests(sync: PortalSync) -> int:
    """HTTP requests this step's client has sent so far (each step of a run has its own client
    in Dagster; in one process `run_once` they share one, and the step counts only its own)."""
    return int(sync.client.usage.snapshot()["http_requests"])


# --- fetch -----------------------------------------------------------------------------------


def fetch(sync: PortalSync, reserved_path: str | Path) -> Path:
    """Re-read the current state of what changed (or of everything, in a full resync)."""
    reserved = Reserved.read(reserved_path)
    before = _requests(sync)
    fetched = Fetched(reserved=reserved)
    if reserved.mode == SyncMode.FULL_RESYNC:
        _scan_all(sync, fetched)
    else:
        _fetch_changes(sync, fetched, Path(reserved.events_file or ""), set(reserved.discarded))
    for process_id, message_ids in fetched.failed.items():
        # Moved out of the reservation now, before anything can acknowledge it (facts §2.10).
        sync.queue.fail(process_id, message_ids, error_lane=reserved.mode == SyncMode.ERROR_LANE)
    fetched.requests = _requests(sync) - before
    give_back_freed_memory()  # the answers and frames are staged: the commit should not sit on their heap
    return fetched.write(sync.staging_dir / "fetched.json")


# The columns of the event index: one row per queue event a registered kind understands.
_INDEX_CHUNK = 100_000  # events turned into columns at a time (bounds the Python objects alive)


@dataclass
class EventIndex:
    """A run's queue events as columns (``kind``, ``entity_id``, ``delete``, ``changed_at``, ``row_id``,
    ``message_id``, ``event_name``, ``process_id``), read from the staged file in one pass.

    About 60 bytes per event, so a million queued changes fit in a run's memory budget where a
    million `QueueEvent` objects would not (issue 13 goal 3)."""

    frame: pd.DataFrame
    unknown: int  # events no registered kind understands (logged, acknowledged, not loaded)
    unknown_names: set[str]
    unregistered_types: bool  # a smart-process event for a type the registry does not know
    reference: int = 0  # events saying reference data changed (refreshed, then acknowledged)
    reference_names: set[str] = field(default_factory=set)
    # The kinds the events name, by key: the registry's, and retired smart-process types whose item
    # deletions are still queued (`EntityRegistry.resolve`), which the registry no longer lists.
    kinds: dict[str, EntityKind] = field(default_factory=dict)

    def plan(self) -> dict[str, tuple[np.ndarray, pd.Series]]:
        """Per kind key: ids to fetch (ascending) and, per object, its latest change time and
        whether that was a delete (a frame indexed by id: ``changed_at``, ``delete``).

        The queue keeps one row per (event, object) with the last occurrence's time (facts §2.11),
        so one object can have ADD, UPDATE and DELETE rows; the latest by (TIMESTAMP_X, row ID) wins.
        """
        latest = self.frame.sort_values(["changed_at", "row_id"], kind="stable").drop_duplicates(
            ["kind", "entity_id"], keep="last")
        plans = {}
        for key, rows in latest.groupby("kind", observed=True, sort=False):
            rows = rows.sort_values("entity_id")
            fetch_ids = rows.loc[~rows["delete"], "entity_id"].to_numpy(dtype="int64")
            plans[str(key)] = (fetch_ids, rows.set_index("entity_id")[["changed_at", "delete"]])
        return plans

    def events_of(self, key: str, entity_ids: Iterable[int]) -> pd.DataFrame:
        frame = self.frame
        return frame[(frame["kind"] == key) & frame["entity_id"].isin(list(entity_ids))]


def index_events(sync: PortalSync, path: Path, discarded: set[str], *, types_fresh: bool = False) -> EventIndex:
    """Read the staged events once into an `EventIndex` (discarded messages left out).
    ``types_fresh``: the registry's types were just asked, so an item of a type it does not list is
    gone with its type (`EntityRegistry.resolve`)."""
    pieces: list[pd.DataFrame] = []
    columns: dict[str, list] = {name: [] for name in
                                ("kind", "entity_id", "delete", "changed_at", "row_id", "message_id", "event_name",
                                 "process_id")}
    unknown, names, unregistered, shown = 0, set(), False, 0
    reference, reference_names = 0, set()
    kinds: dict[str, EntityKind] = {}
    registry = sync.registry
    for event in iter_events(path):
        if event.message_id in discarded:
            continue
        if is_reference_event(event.event_name):
            # No CRM object behind it: the run refreshes the reference data instead (`_fetch_changes`).
            reference += 1
            reference_names.add(event.event_name)
            continue
        target = registry.resolve(event.event_name, event.event_data, types_fresh=types_fresh)
        if target.kind is None or target.action is None or target.entity_id is None:
            unknown += 1
            names.add(event.event_name)
            unregistered = unregistered or "smart-process type" in target.reason
            if shown < 20:  # one line each for the first few; the count says the rest
                shown += 1
                log.warning("portal %s: queue row %s not synced: %s", sync.portal, event.row_id, target.reason)
            continue
        kinds.setdefault(target.kind.key, target.kind)
        columns["kind"].append(target.kind.key)
        columns["entity_id"].append(target.entity_id)
        columns["delete"].append(target.action is Action.DELETE)
        columns["changed_at"].append(event.timestamp)
        columns["row_id"].append(event.row_id)
        columns["message_id"].append(event.message_id)
        columns["event_name"].append(event.event_name)
        columns["process_id"].append(event.process_id or "")
        if len(columns["row_id"]) >= _INDEX_CHUNK:
            pieces.append(_index_piece(columns))
    pieces.append(_index_piece(columns))
    frame = pd.concat(pieces, ignore_index=True) if len(pieces) > 1 else pieces[0]
    for name in ("kind", "event_name", "process_id"):
        frame[name] = frame[name].astype("category")
    return EventIndex(frame, unknown, names, unregistered, reference, reference_names, kinds)


def _index_piece(columns: dict[str, list]) -> pd.DataFrame:
    piece = pd.DataFrame({
        "kind": pd.Series(columns["kind"], dtype="category"),
        "entity_id": pd.Series(columns["entity_id"], dtype="int64"),
        "delete": pd.Series(columns["delete"], dtype="bool"),
        "changed_at": pd.to_datetime(pd.Series(columns["changed_at"], dtype=object), utc=True),
        "row_id": pd.Series(columns["row_id"], dtype="int64"),
        "message_id": pd.Series(columns["message_id"], dtype="string[pyarrow]"),
        "event_name": pd.Series(columns["event_name"], dtype="category"),
        "process_id": pd.Series(columns["process_id"], dtype="category"),
    })
    for values in columns.values():
        values.clear()
    return piece


def _fetch_changes(sync: PortalSync, fetched: Fetched, events_file: Path, discarded: set[str]) -> None:
    index = index_events(sync, events_file, discarded)
    stale = invalidated_by(index.unknown_names | index.reference_names)
    if index.unregistered_types:
        stale.add(TYPES)
    if stale:
        # The portal's types or fields changed (facts §3, §4.8): ask again, and re-plan with them.
        log.info("portal %s: queue rows say %s changed; asking the portal again", sync.portal, sorted(stale))
        sync.forget(stale)
        index = index_events(sync, events_file, discarded, types_fresh=TYPES in stale)
    fetched.unknown_events = index.unknown
    fetched.reference_events = index.reference
    if index.reference:
        _reread_reference(sync, fetched, sorted(index.reference_names))
    plans = index.plan()
    parts: dict[str, TablePart] = {}
    counts = index.frame["kind"].value_counts()
    for key, (fetch_ids, latest) in list(plans.items()):
        part = parts[key] = _changes_part(sync, fetched, index.kinds[key])
        deletes = latest[latest["delete"]]
        part.tombstones.extend((int(entity_id), "deleted", at.isoformat())
                               for entity_id, at in deletes["changed_at"].items())
        part.events = int(counts.get(key, 0))
        if part.tombstones_only:  # a deleted type: its items are gone with it, nothing to read
            part.tombstones.extend((int(entity_id), "not_found", latest.at[entity_id, "changed_at"].isoformat())
                                   for entity_id in fetch_ids)
            del plans[key]
    if TYPES in stale:
        # The types were just asked: a type they no longer list was deleted, and with it its items
        # (Bitrix24 deletes only empty types), even where their own deletions never reached the queue.
        for retired in _retired_type_parts(sync, {kind.table for kind in sync.registry}, "type_deleted"):
            part = parts.setdefault(retired.kind, retired)
            if part is not retired:
                named = {entity_id for entity_id, _reason, _at in part.tombstones}
                part.tombstones.extend(row for row in retired.tombstones if row[0] not in named)
    for number, piece in enumerate(_slices(index.kinds, plans, CHUNK)):
        for key, result in _fetch_slice(sync, fetched, index, piece).items():
            part, latest = parts[key], plans[key][1]
            part.tombstones.extend((entity_id, "not_found", latest.at[entity_id, "changed_at"].isoformat())
                                   for entity_id in result.not_found)
            if not result.records:
                continue
            frame, bad_ids = typed_frame(sync, index.kinds[key], part, result.records)
            _park(fetched, index, key, {i: "record unreadable (id or modification time)" for i in bad_ids})
            stage_frame(sync, part, frame, number)
        failpoint("during_fetch")
    fetched.tables.extend(parts.values())


def _changes_part(sync: PortalSync, fetched: Fetched, kind: EntityKind) -> TablePart:
    """``kind``'s `TablePart` for a change run; for a smart-process type the portal no longer lists
    (deleted: only an empty type can be), a part without schema that carries tombstones only: its
    ``crm.item.fields`` answers NOT_FOUND, and `commit` has no schema to evolve."""
    if kind.key not in sync.registry:
        return TablePart.of_deleted_type(kind.key, kind.table)
    try:
        return new_table_part(sync, kind)
    except (NotFound, LookupError) as error:
        # The cached types still list it, its fields are not cached and the portal does not know it.
        if isinstance(error, KeyError) or not _type_deleted(sync, fetched, kind):
            raise
        log.warning("portal %s: smart-process type %s is gone from the portal; its queued items are tombstoned",
                    sync.portal, kind.entity_type_id)
        return TablePart.of_deleted_type(kind.key, kind.table)


def _reread_reference(sync: PortalSync, fetched: Fetched, names: list[str]) -> None:
    """Read every dimension of the portal (two ``batch`` requests, however many such rows) and stage
    it for commit (`Fetched.reference`).

    A portal that refuses the read (e.g. the app lacks the ``department`` scope) fails the scheduled
    refresh too, where operators see it; here it is logged and the rows are acknowledged without a
    refresh, so reference data never holds up the CRM changes. Transport faults fail the step as
    any read does, and its retry reads again."""
    log.info("portal %s: %d queue rows say reference data changed (%s); reading it again", sync.portal,
             fetched.reference_events, ", ".join(names[:5]))
    try:
        reference = load_reference(sync.client)
    except REFERENCE_REFUSALS as error:
        log.error("portal %s: reference data changed, but the portal refused to read it (%s); the rows are "
                  "acknowledged without a refresh, the scheduled refresh retries and reports it",
                  sync.portal, redact(str(error)))
        return
    fetched.reference = stage_dimensions(sync.staging_dir, reference.frames)


def _slices(kinds: Mapping[str, EntityKind], plans: Mapping[str, tuple[np.ndarray, pd.Series]],
            size: int) -> Iterator[ChangePlan]:
    """The plan's fetches cut into pieces of ``size`` ids, kinds mixed: one full request each."""
    piece: dict[str, KindPlan] = {}
    room = size
    for key, (ids, _latest) in plans.items():
        kind, start = kinds[key], 0
        while start < len(ids):
            taken = ids[start:start + room]
            start += len(taken)
            piece[key] = KindPlan(kind, tuple(int(i) for i in taken), (), {})
            room -= len(taken)
            if room == 0:
                yield ChangePlan(piece)
                piece, room = {}, size
    if piece:
        yield ChangePlan(piece)


# The portal answered, and refused these objects: the error lane is for them (DESIGN §3 step 7).
# Everything else (transport faults, malformed bodies, limits, 5xx, authentication) says nothing
# about the objects: it fails the step, and the retry re-reads the same reservation.
REFUSALS = (NotFound, Forbidden, InvalidArgument, MethodNotFound)
# Reading reference data may also be refused for a scope the app lacks (``department``, ``user``):
# that must not hold up the CRM changes queued with the event (the scheduled refresh reports it).
REFERENCE_REFUSALS = (*REFUSALS, InsufficientScope)


def _fetch_slice(sync: PortalSync, fetched: Fetched, index: EventIndex, piece: ChangePlan) -> dict[str, FetchResult]:
    try:
        return fetch_changes(sync.client, piece)
    except REFUSALS as error:
        log.warning("portal %s: a fetch request was refused (%s); narrowing it down", sync.portal, error)
        refusal = error
    results: dict[str, FetchResult] = {}
    for key, kind_plan in piece.kinds.items():
        if isinstance(refusal, NotFound) and _type_deleted(sync, fetched, kind_plan.kind):
            log.warning("portal %s: smart-process type %s is gone from the portal; its %d items read are gone "
                        "with it (tombstoned)", sync.portal, kind_plan.kind.entity_type_id, len(kind_plan.fetch_ids))
            results[key] = FetchResult([], tuple(kind_plan.fetch_ids))
            continue
        result, refused = _fetch_isolating(sync.client, kind_plan.kind, list(kind_plan.fetch_ids))
        results[key] = result
        if refused:
            log.error("portal %s: the portal refused %d %s: %s", sync.portal, len(refused),
                      kind_plan.kind.table, sorted(refused)[:20])
            _park(fetched, index, key, refused)
    return results


def _type_deleted(sync: PortalSync, fetched: Fetched, kind: EntityKind) -> bool:
    """Whether ``kind`` is a smart-process type the portal no longer lists, asked afresh once per
    fetch (``crm.type.list``, an administrator's method listing every type) after its read answered
    NOT_FOUND: a deleted type's list and fields do, and Bitrix24 deletes a type only when no item is
    left in it (``crm.type.delete``). Without this, items of a type whose ``ONCRMTYPEDELETE`` was
    missed would be refused one by one into the error lane, there to fail for ever. When the types
    cannot be asked, nothing is taken as deleted (the refusal is handled as any other)."""
    if kind.value_style != "item" or kind.entity_type_id is None:
        return False
    if not fetched._types_asked:
        fetched._types_asked = True
        try:
            fetched._listed_types = sync.ask_types()
        except Bitrix24Error as error:
            log.warning("portal %s: could not ask the smart-process types (%s); not taking type %s as deleted",
                        sync.portal, redact(str(error))[:200], kind.entity_type_id)
    return fetched._listed_types is not None and kind.entity_type_id not in fetched._listed_types


def _fetch_isolating(client: Bitrix24Client, kind: EntityKind,
                     ids: list[int]) -> tuple[FetchResult, dict[int, str]]:
    """Fetch ``ids``, halving any group the portal refuses until the refused objects stand alone,
    so one poisoned object never parks the 2,499 others of its request (about 2 log2(n) extra
    requests per refused object)."""
    try:
        return fetch_by_ids(client, kind, ids), {}
    except REFUSALS as error:
        if len(ids) == 1:
            return FetchResult([], ()), {ids[0]: f"{type(error).__name__}: {error}"}
    middle = len(ids) // 2
    left, left_refused = _fetch_isolating(client, kind, ids[:middle])
    right, right_refused = _fetch_isolating(client, kind, ids[middle:])
    return (FetchResult(left.records + right.records, left.not_found + right.not_found),
            {**left_refused, **right_refused})


@dataclass
class _ScanLead:
    """What a full scan sends ahead of the counts of ``kinds``: their ``event.bind`` commands (so a
    row changed after a count reaches the queue, DESIGN §3), the reference-data binds, and the
    look-ups the portal cache lacks (`PortalSync.lookup_commands`)."""

    kinds: list[EntityKind]
    connector: str  # the connector key the binds carry (`OfflineQueue.assumed_connector`)
    binds: dict[str, Command]
    reference_binds: dict[str, Command]
    lookups: dict[str, Command]

    @classmethod
    def of(cls, sync: PortalSync, kinds: Sequence[EntityKind], *, first: bool) -> _ScanLead:
        """The first request's lead (``first``: also features, types and the reference-data binds),
        or the lead of kinds found from its answer (their binds and fields)."""
        connector = sync.queue.assumed_connector()
        binds = sync.queue.bind_commands(kinds, connector=connector)
        reference = sync.reference_bind_commands(connector) if first else {}
        return cls(list(kinds), connector, binds, {key: command for key, command in reference.items()
                                                   if key not in binds},
                   sync.lookup_commands(kinds, everything=first, events=False))

    @property
    def commands(self) -> dict[str, Command]:
        return {**self.binds, **self.reference_binds, **self.lookups}

    def take(self, sync: PortalSync, outcome: BatchResult) -> bool:
        """Cache the look-ups and check the binds in ``outcome``; False if the binds carried a
        connector key the plan turned out not to allow (they were refused: bind again). Raises a
        refusal of a CRM bind; a refused reference-data bind is logged (the schedule covers it)."""
        sync.take_lookups(self.lookups, outcome)
        if sync.queue.connector != self.connector:
            return False
        bound = sync.queue.bound_from(self.binds, outcome)
        log.info("portal %s: bound %d offline events (%d already bound)", sync.portal,
                 len(bound.bound), len(bound.already_bound))
        if self.reference_binds:
            try:
                sync.reference_bound(self.reference_binds, outcome)
            except ApiError as error:
                # Optional: the schedule refreshes reference data without them; the CRM binds stand.
                log.warning("portal %s: binding reference-data events was refused (%s)", sync.portal,
                            redact(str(error)))
        return True


def _scan_all(sync: PortalSync, fetched: Fetched) -> None:
    """Bind, then scan every kind, the kinds sharing requests (`scan_kinds`).

    Look-ups the portal cache lacks (a fresh portal's features, types and fields) ride in the first
    scan request, ahead of the counts, instead of a request of their own (issue 13: ceil(N / 2,500)
    + 1 requests for N entities of the standard kinds). The smart-process types are then known only
    from that answer: their kinds are bound and counted in the next request, in the room the pages
    leave (`scan_kinds` ``more``). With the features unknown the binds carry the connector key asked
    for; a plan without ``rest_auth_connector`` refuses them, and the scan starts again with binds
    that carry none (the first request's pages are dropped: read before a bind took effect). A cached
    kind the portal no longer knows (a deleted smart-process type) makes the types be asked again and
    the scan start over, once."""
    known = sync.cached_kinds()
    kinds = known if known is not None else list(STANDARD_KINDS)
    leads = [_ScanLead.of(sync, kinds, first=True)]
    later: list[EntityKind] = []

    def smart_processes() -> tuple[list[EntityKind], dict[str, Command]]:
        if known is not None:
            return [], {}
        standard = {kind.key for kind in kinds}
        later.extend(kind for kind in sync.registry if kind.key not in standard)
        if not later:
            return [], {}
        leads.append(_ScanLead.of(sync, later, first=False))
        return later, leads[-1].commands

    seen: dict[str, list[np.ndarray]] = defaultdict(list)
    numbers: dict[str, int] = defaultdict(int)
    parts: dict[str, TablePart] = {}
    scan = scan_kinds(sync.client, kinds, lead=leads[0].commands, more=smart_processes)
    try:
        for key, rows in scan:
            if key is None:
                lead = leads.pop(0)
                if not lead.take(sync, rows):
                    scan.close()
                    log.warning("portal %s: the plan does not allow the connector key %r; binding without it "
                                "and scanning again", sync.portal, lead.connector)
                    return _scan_all(sync, fetched)
                parts.update((kind.key, new_table_part(sync, kind)) for kind in lead.kinds)
                continue
            kind, part = sync.registry[key], parts[key]
            frame, bad_ids = typed_frame(sync, kind, part, rows)
            if bad_ids:
                log.error("portal %s: %d %s rows unreadable in the full scan: %s", sync.portal, len(bad_ids),
                          kind.table, sorted(bad_ids)[:20])
            seen[key].append(np.fromiter((int(row[kind.id_field]) for row in rows), dtype="int64", count=len(rows)))
            stage_frame(sync, part, frame, numbers[key])
            numbers[key] += 1
            failpoint("during_fetch")
    except (NotFound, InvalidArgument, LookupError) as error:
        if known is None or isinstance(error, KeyError) or (
                isinstance(error, InvalidArgument) and error.code != "ERROR_EVENT_NOT_FOUND"):
            raise  # a KeyError is a bug here, not a portal's answer
        # The kinds came from the cache and the portal does not know one of them (its events are not
        # found, its fields or pages answer NOT_FOUND): a smart-process type was deleted and its type
        # event missed or not bound. Ask the types again and start over, once: with fresh types
        # (``known`` None) such an answer is the portal's to report.
        scan.close()
        log.warning("portal %s: a cached kind is gone from the portal (%s); asking its smart-process types "
                    "again and scanning again", sync.portal, redact(str(error))[:200])
        sync.forget([TYPES, "fields:*"])
        return _scan_all(sync, fetched)
    for kind in [*kinds, *later]:
        part = parts[kind.key]
        ids = np.concatenate(seen[kind.key]) if seen[kind.key] else np.empty(0, dtype="int64")
        ids_file = sync.staging_dir / f"{kind.table}.scanned{CHUNK_SUFFIX}"
        write_frame(ids_file, pd.DataFrame({"id": ids}))
        part.scanned_ids_file = str(ids_file)
        fetched.tables.append(part)
    if known is None:
        # The types were asked in this scan: a table of a type they do not list is a deleted type's.
        # (With cached types, reconcile and the next change run that asks the types see to it.)
        fetched.tables.extend(_retired_type_parts(sync, {kind.table for kind in [*kinds, *later]}))


def unlisted_type_kinds(sync: PortalSync, listed: set[str]) -> list[EntityKind]:
    """The smart-process kinds of the warehouse's ``items_<id>`` tables other than ``listed``: types
    deleted from this portal, or another portal's (the portals share the tables)."""
    return [smart_process_kind(type_id) for table in sync.warehouse.entity_tables()
            if table not in listed and (type_id := smart_process_type_of_table(table)) is not None]


def _retired_type_parts(sync: PortalSync, scanned: set[str], reason: str = "absent_in_full_scan") -> list[TablePart]:
    """Tombstone-only parts for the portal's live rows in smart-process tables (``items_<id>``) other
    than ``scanned`` (those of the types the portal lists): deleted types (Bitrix24 deletes only
    empty ones), whose rows must not stay live. Another portal's type holds no rows of this one and
    gives no part."""
    parts = []
    now = datetime.now(UTC).isoformat()
    for kind in unlisted_type_kinds(sync, scanned):
        versions = sync.warehouse.row_versions(sync.portal, kind.table)
        live = versions.loc[versions["_deleted_at"].isna(), "id"]
        if len(live):
            log.warning("portal %s: %d rows of %s, a smart-process type the portal no longer has, are tombstoned",
                        sync.portal, len(live), kind.table)
            parts.append(TablePart.of_deleted_type(kind.key, kind.table, [(int(i), reason, now) for i in live]))
    return parts


def new_table_part(sync: PortalSync, kind: EntityKind) -> TablePart:
    """An empty `TablePart` of ``kind`` with its schema (from the cached field descriptions) staged."""
    schema = schema_from_fields(kind, sync.fields(kind))
    schema_file = write_json(sync.staging_dir / f"{kind.table}.schema.json", schema_to_json(schema))
    return TablePart(kind=kind.key, table=kind.table, schema_file=str(schema_file))


def typed_frame(sync: PortalSync, kind: EntityKind, part: TablePart,
                records: list[dict]) -> tuple[pd.DataFrame, list[int]]:
    """The chunk as a typed frame; records whose id or modification time is unreadable are singled
    out, not fatal. A value that does not fit its column is NULL and counted in ``part`` (DESIGN §3.9).

    A field the cached descriptions do not know (a user field added since) makes the portal be
    asked again; before the kind's first chunk is staged the new schema is used at once, later the
    next run uses it (the value is kept in ``_raw`` meanwhile)."""
    _check_fields(sync, kind, part, records)
    schema = schema_from_json(read_json(part.schema_file))
    bad: list[int] = []
    try:
        frame, coercions = frame_and_coercions(kind, schema, records)
    except MalformedRecord:
        good = []
        for record in records:
            try:
                frame_and_coercions(kind, schema, [record])
                good.append(record)
            except MalformedRecord as error:
                log.error("portal %s: %s", sync.portal, error)
                bad.append(int(record[kind.id_field]))
        frame, coercions = frame_and_coercions(kind, schema, good)
    for column, count in coercions.counts.items():
        log.warning("portal %s: %d values of %s.%s do not fit the column; stored NULL, kept in _raw "
                    "(e.g. %s)", sync.portal, count, kind.table, column, coercions.examples[column][:1])
    part.add_coercions(coercions)
    return frame, bad


def _check_fields(sync: PortalSync, kind: EntityKind, part: TablePart, records: list[dict]) -> None:
    """Ask for ``kind``'s fields again if the records carry a user field the cache does not know.

    Only user fields (``UF_*`` / ``ufCrm*``, facts §4.3-§4.4) appear at run time; other keys a list
    answers without describing them (crm.item.list's ``entityTypeId``) are no reason to ask, and a
    standard field new with a Bitrix24 update is picked up by the hourly refresh."""
    if not records:
        return
    known = sync.fields(kind)
    present = set().union(*(record.keys() for record in records))
    new = {name for name in present - known.keys() if name.upper().startswith("UF")}
    if not new:
        return
    log.info("portal %s: %s answered user fields the cache does not know (%s); asking for its fields again",
             sync.portal, kind.key, sorted(new)[:5])
    sync.forget([f"fields:{kind.key}"])
    fields = sync.fields(kind)
    if not part.chunks:
        write_json(Path(part.schema_file), schema_to_json(schema_from_fields(kind, fields)))


def stage_frame(sync: PortalSync, part: TablePart, frame: pd.DataFrame, number: int) -> None:
    """Write ``frame`` as the part's chunk ``number`` (Arrow IPC, `write_frame`), unless it is empty."""
    if frame.empty:
        return
    path = write_frame(sync.staging_dir / f"{part.table}.{number:05d}{CHUNK_SUFFIX}", frame)
    part.chunks.append(str(path))
    part.rows += len(frame)


def _park(fetched: Fetched, index: EventIndex, key: str, errors: Mapping[int, str]) -> None:
    """Every queue row about these objects goes to the error lane, with the reason per object."""
    if not errors:
        return
    for row in index.events_of(key, errors).itertuples(index=False):
        if row.process_id:
            fetched.failures.append(FailedMessage(
                str(row.message_id), str(row.event_name), key, int(row.entity_id), redact(errors[row.entity_id]),
                event_at=row.changed_at.isoformat(), process_id=str(row.process_id)))


# --- commit ----------------------------------------------------------------------------------


def commit(sync: PortalSync, fetched_path: str | Path) -> Path:
    """Upserts chunk by chunk, then tombstones, error lane, the reference data fetch staged (if the
    queue said it changed; the analysts' views are rebuilt after it) and the journal's *loaded* mark in one
    transaction (DESIGN §3 step 5); memory holds one chunk at a time."""
    fetched = Fetched.read(fetched_path)
    committed = Committed(fetched_file=str(fetched_path))
    schemas: dict[str, TableSchema | str] = {}
    stored = None
    for part in fetched.tables:
        if not part.tombstones_only:
            schemas[part.table] = schema_from_json(read_json(part.schema_file))
            sync.warehouse.ensure_table(schemas[part.table])
            continue
        # A retired smart-process type's part: tombstones by table name, into the table if it was
        # ever loaded (a type created and deleted between two runs left nothing to mark).
        stored = set(sync.warehouse.entity_tables()) if stored is None else stored
        if part.table in stored:
            schemas[part.table] = part.table
        else:
            part.tombstones.clear()
    reference = read_staged_dimensions(fetched.reference)
    if reference:
        ensure_reference_tables(_sql_warehouse(sync))
    absent = {part.table: _absent_ids(sync, part) for part in fetched.tables if part.scanned_ids_file}
    now = datetime.now(UTC)
    for part in fetched.tables:
        outcome = committed.tables.setdefault(part.table, TableOutcome(table=part.table, events=part.events))
        outcome.add_coercions(part.coerced)
    # Upserts go in one transaction per chunk: a transaction's new versions stay in the engine's
    # memory until it commits, so one transaction for a million rows would hold them all. Upserts
    # are idempotent (an equal or older version changes nothing), so a crash between two leaves
    # the journal at *reserved* and the next run applies the same rows again without effect.
    # The journal's *loaded* mark, tombstones and the error lane go in the last transaction.
    chunks = [(part, Path(chunk)) for part in fetched.tables for chunk in part.chunks]
    for number, (part, chunk) in enumerate(chunks[:-1]):
        with sync.warehouse.transaction(publish=False) as tx:
            _upsert(sync, tx, committed.tables[part.table], schemas[part.table], chunk)
        if number == 0:
            failpoint("during_commit")
    with sync.warehouse.transaction() as tx:
        for part, chunk in chunks[-1:]:
            _upsert(sync, tx, committed.tables[part.table], schemas[part.table], chunk)
        for part in fetched.tables:
            outcome = committed.tables[part.table]
            tombstones: dict[tuple[str, datetime], list[int]] = defaultdict(list)
            for entity_id, reason, at in part.tombstones:
                tombstones[(reason, datetime.fromisoformat(at))].append(entity_id)
            if absent.get(part.table):
                tombstones[("absent_in_full_scan", now)].extend(absent[part.table])
            for (reason, deleted_at), ids in tombstones.items():
                outcome.tombstones += tx.tombstone(sync.portal, schemas[part.table], ids, reason, deleted_at)
        if fetched.failures:
            tx.park(sync.portal, fetched.failures)
        if fetched.reserved.mode == SyncMode.ERROR_LANE:
            failed = {failure.message_id for failure in fetched.failures}
            tx.resolve_parked(sync.portal, [event.message_id for event in _reserved_events(fetched)
                                            if event.message_id not in failed])
        if reference:
            # With the journal's mark below: a reservation is never *loaded* (so never acknowledged,
            # even by a later run's recovery) before the refresh its rows asked for is stored.
            committed.reference_rows = write_dimensions(_sql_warehouse(sync), sync.portal, reference)
        if fetched.reserved.process_ids:
            tx.mark_loaded(sync.portal, fetched.reserved.process_ids)
    if reference:
        _rebuild_analysts_views(sync)
    # The next round's fetch does not read the warehouse: its peak should not sit on the table's
    # cached blocks (issue 13: one run under 400 MB whatever the backlog).
    sync.warehouse.release_memory()
    give_back_freed_memory()
    failpoint("after_commit")
    return committed.write(sync.staging_dir / "committed.json")


ANALYTICS_LOCK_WAIT_S = 10


def _rebuild_analysts_views(sync: PortalSync) -> None:
    """Rebuild the analysts' views (new columns, labels) after a reference refresh, in a transaction
    of its own that waits at most `ANALYTICS_LOCK_WAIT_S` for locks: an analyst's transaction left
    open on a view would otherwise hold the portal's change sync indefinitely (the rebuild replaces
    the views' schema). The views read the dimensions live, so only new columns wait, for the next
    refresh, when this gives up."""
    warehouse = _sql_warehouse(sync)
    try:
        with warehouse.transaction():
            warehouse.limit_lock_wait(ANALYTICS_LOCK_WAIT_S)
            rebuild_analytics(warehouse)
    except Exception as error:  # optional here: the data is committed, the scheduled refresh rebuilds
        log.warning("portal %s: the analysts' views were not rebuilt after the reference refresh (%s); "
                    "the next refresh rebuilds them", sync.portal, redact(str(error))[:300])


def _sql_warehouse(sync: PortalSync) -> SqlWarehouse:
    """The portal's warehouse as the SQL warehouse reference data needs; raises `WarehouseError` else."""
    if not isinstance(sync.warehouse, SqlWarehouse):
        raise WarehouseError(f"reference data needs a SQL warehouse, got {type(sync.warehouse).__name__}")
    return sync.warehouse


def _upsert(sync: PortalSync, tx: Transaction, outcome: TableOutcome, schema: TableSchema, chunk: Path) -> None:
    counts = tx.upsert(sync.portal, schema, chunk)
    outcome.rows_upserted += counts.written
    outcome.rows_ignored_older += counts.stale


def _absent_ids(sync: PortalSync, part: TablePart) -> list[int]:
    seen = feather.read_table(part.scanned_ids_file).column("id").to_numpy()
    current = sync.warehouse.row_versions(sync.portal, part.table)
    live = current.loc[current["_deleted_at"].isna(), "id"].to_numpy(dtype="int64")
    return [int(i) for i in np.setdiff1d(live, seen)]


# --- ack -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    """One pass of reserve -> fetch -> commit -> ack inside a run (`run_rounds`)."""

    sync: PortalSync  # this round's: its own staging directory and row of the sync log
    committed: Path  # the round's committed manifest (its numbers, for reports)
    cleared: int  # reservations acknowledged


def run_rounds(sync: PortalSync, mode: SyncMode | str = SyncMode.CHANGES,
               writes: AbstractContextManager | None = None) -> Iterator[Round]:
    """The run's four steps in this process, repeated in rounds of at most `ROUND_EVENTS` queue rows
    until ``sync.max_events`` rows are taken or the queue is dry; yields each round after its ack.

    Why rounds: a run holds its reserved rows' index and plan in memory, so a run asked to drain a
    million queued changes would grow with the backlog (issue 13 goal 3). Each round is a run of its
    own to the journal and the sync log (run id ``<run>.<n>:<portal>``, staging directory
    ``<run>.<n>``), so a crash between rounds leaves exactly what a crash between two runs leaves,
    and the next round (or run) recovers it the same way. A full resync is one round (it reserves
    nothing; its scan streams in chunks already).

    ``writes``: entered around reserve, commit and ack (the steps that write; fetch only reads), e.g.
    a writer-pool slot. Errors of the steps propagate; the rounds before have been acknowledged."""
    mode = run_mode(mode)
    writes = writes if writes is not None else nullcontext()
    taken, number = 0, 0
    while True:
        limit = min(ROUND_EVENTS, sync.max_events - taken) if mode is not SyncMode.FULL_RESYNC else sync.max_events
        part = replace(sync, max_events=limit, staging_dir=_round_dir(sync.staging_dir, number))
        with writes:
            reserved_path = reserve(part, mode)
        fetched_path = fetch(part, reserved_path)
        with writes:
            committed = commit(part, fetched_path)
        with writes:
            cleared = ack(part, committed)
        events = Reserved.read(reserved_path).event_count
        yield Round(part, committed, cleared)
        if number:
            shutil.rmtree(part.staging_dir, ignore_errors=True)  # round 0's is the caller's to remove
        taken += events
        number += 1
        # Fewer rows than asked for: the queue is dry (or what is left failed to reserve this time).
        if mode is SyncMode.FULL_RESYNC or events < limit or taken >= sync.max_events:
            return


def _round_dir(run_dir: Path, number: int) -> Path:
    """Round 0 works in the run's staging directory, round n in its sibling ``<run>.<n>``."""
    if number == 0:
        return run_dir
    return run_staging_dir(run_dir.parent.parent, run_dir.parent.name, f"{run_dir.name}.{number}")


def run_once(sync: PortalSync, mode: SyncMode | str = SyncMode.CHANGES) -> Path:
    """Every round of a run in this process (`run_rounds`); returns the last round's committed
    manifest (for its numbers: with one round, the run's)."""
    return list(run_rounds(sync, mode))[-1].committed  # at least one round, a few dozen at most


def ack(sync: PortalSync, committed_path: str | Path) -> int:
    """Acknowledge what is committed; returns the number of reservations cleared.

    A reservation without failures is cleared whole. One that held failed messages is cleared
    message by message (only what was loaded or discarded) and journalled *parked*, so its failed
    rows stay in the queue whether or not ``event.offline.error`` took them out of the reservation
    (facts §2.10 leaves that open for error-lane rows); the next drain re-reads it. Closes the
    run's row of the sync log (``_sync_runs``) with its numbers.
    """
    committed = Committed.read(committed_path)
    fetched = Fetched.read(committed.fetched_file)
    before = _requests(sync)
    process_ids = fetched.reserved.process_ids
    if process_ids:
        failed = fetched.failed
        loaded: dict[str, list[QueueEvent]] = {pid: [] for pid in failed}
        if failed:
            for event in _reserved_events(fetched):
                if event.process_id in failed and event.message_id not in failed[event.process_id]:
                    loaded[event.process_id].append(event)
        sync.queue.ack(process_ids, loaded)
        sync.warehouse.mark_acked(sync.portal, [pid for pid in process_ids if pid not in failed])
        sync.warehouse.mark_parked(sync.portal, [pid for pid in process_ids if pid in failed])
        sync.warehouse.prune_journal(sync.portal, acked_before=datetime.now(UTC) - JOURNAL_KEEP)
    _close_run(sync, fetched, committed, _requests(sync) - before)
    _report_progress(sync, fetched.reserved)
    return len(process_ids)


def _report_progress(sync: PortalSync, reserved: Reserved) -> None:
    """Tell the sensor (through the state store) what this run leaves behind: the messages still in
    the error lane, and that a full resync of the portal's current install completed. The sensor
    confirms a quiet portal as current only when both are clear (pipelines.sensors)."""
    if sync.state is None:
        return
    installed = None
    if reserved.mode == SyncMode.FULL_RESYNC:
        portal = sync.state.portal(sync.portal)
        installed = portal.install_stamp if portal else "unknown"
    # Up to the ledger's page size: the sensor only needs to know whether any wait.
    sync.state.record_progress(sync.portal, parked=len(sync.warehouse.error_lane(sync.portal)), resynced=installed)


def _close_run(sync: PortalSync, fetched: Fetched, committed: Committed, ack_requests: int) -> None:
    reserved = fetched.reserved
    if not reserved.run_id:
        return  # a manifest without a run (reconcile's repair) has no row in the sync log
    outcomes = committed.tables.values()
    sync.warehouse.log_run(SyncRun(
        reserved.run_id, sync.portal,
        datetime.fromisoformat(reserved.started_at) if reserved.started_at else datetime.now(UTC),
        finished_at=datetime.now(UTC), status=SUCCEEDED, events=reserved.event_count,
        rows_upserted=sum(outcome.rows_upserted for outcome in outcomes),
        rows_tombstoned=sum(outcome.tombstones for outcome in outcomes),
        requests=reserved.requests + fetched.requests + ack_requests,
        errors=len(fetched.failures), mode=SyncMode(reserved.mode).value))


def _reserved_events(fetched: Fetched) -> Iterator[QueueEvent]:
    if fetched.reserved.events_file:
        yield from iter_events(Path(fetched.reserved.events_file))
