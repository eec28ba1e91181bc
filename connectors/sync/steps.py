"""The CDC loop of one portal as four steps: reserve -> fetch -> commit -> ack (DESIGN §3).

Each step reads the previous step's manifest and writes its own, so an orchestrator can run them
as separate ops (or in one process) and a crash between any two leaves a state the next run's
`reserve` recovers from:

* reserve  recovers first (ack what was loaded but not acked; re-read reservations the journal
           holds; find orphans the journal never saw), then reserves new rows, journalling every
           ``process_id`` as *reserved* before anything is processed;
* fetch    plans (coalesces rows to one action per object) and re-reads current state, 2,500
           entities per request, into Parquet chunks; ids that do not come back become tombstones;
           objects that fail for another reason are moved to the error lane right here, so a later
           ack of their reservation cannot drop them;
* commit   one warehouse transaction: upserts, tombstones, journal -> *loaded*;
* ack      ``event.offline.clear`` for the committed reservations, journal -> *acked*.

A full resync (bootstrap) uses the same steps: reserve binds the events, fetch runs the keyset scan,
commit also tombstones ids the scan did not see, ack has nothing to clear.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

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
    plan_changes,
    scan,
    table_schema,
)
from connectors.bitrix24.errors import Forbidden, InvalidArgument, MethodNotFound
from connectors.bitrix24.redaction import redact
from connectors.sync.failpoints import failpoint
from connectors.sync.portal import PortalSync
from connectors.sync.staging import (
    Committed,
    Fetched,
    Reserved,
    TableOutcome,
    TablePart,
    committed_from_json,
    fetched_from_json,
    read_events,
    read_json,
    reserved_from_json,
    schema_from_json,
    schema_to_json,
    sweep_siblings,
    write_events,
    write_frame,
    write_json,
)
from connectors.warehouse import FailedMessage, JournalStatus, ParkedStatus

log = logging.getLogger(__name__)

CHUNK = 2_500  # entities per fetch request and per staged Parquet chunk (50 commands x 50 rows)

MODES = ("changes", "full_resync", "error_lane")
JOURNAL_KEEP = timedelta(days=7)  # acked journal entries kept for inspection, then pruned


# --- reserve ---------------------------------------------------------------------------------


def reserve(sync: PortalSync, mode: str = "changes") -> Path:
    """Recover unfinished work, then reserve new rows; returns the manifest for `fetch`."""
    if mode not in MODES:
        raise ValueError(f"unknown sync mode {mode!r}; expected one of {MODES}")
    reserved = Reserved(portal=sync.portal, mode=mode)
    if mode == "full_resync":
        # Bind first: changes made while the scan runs are then caught by the queue (DESIGN §3).
        bound = sync.queue.bind(sync.registry)
        log.info("portal %s: bound %d offline events (%d already bound)", sync.portal,
                 len(bound.bound), len(bound.already_bound))
        return write_json(sync.staging_dir / "reserved.json", asdict(reserved))

    events: list[QueueEvent] = []
    # A drain also takes back the reservations that kept failed messages (journalled *parked*).
    events.extend(_recover(sync, reserved, parked_too=mode == "error_lane"))
    while len(events) < sync.max_events:
        want = min(CHUNK, sync.max_events - len(events))
        try:
            result = sync.queue.reserve_errors(want) if mode == "error_lane" else sync.queue.reserve(want)
        except (TransportError, MalformedResponse) as error:
            # A reserve is not repeated blindly: the lost answer may have reserved rows under a
            # process_id we never saw. Find those reservations (read-only) and take them instead.
            log.warning("portal %s: a reserve answered nothing readable (%s); looking for the rows it "
                        "may have reserved", sync.portal, error)
            events.extend(_adopt_orphans(sync, reserved, error_lane=mode == "error_lane"))
            break
        reserved.at_most_once = reserved.at_most_once or result.at_most_once
        failpoint("after_reserve_response")
        if result.process_ids:
            counts = {r.process_id: len(r.events) for r in result.reservations if r.process_id}
            sync.warehouse.record_reserved(sync.portal, counts)
            reserved.process_ids.extend(counts)
        events.extend(result.events)
        if result.exhausted:
            break
    if mode == "error_lane":
        reserved.discarded = _discarded(sync, events)
    # The reservations of any dead run are recovered (or none can be left): its files go now.
    for removed in sweep_siblings(sync.staging_dir, sync.keep_staging):
        log.info("portal %s: removed staging left by an earlier run: %s", sync.portal, removed.name)
    manifest = _write_reserved(sync, reserved, events)
    failpoint("after_reserve")
    return manifest


def _recover(sync: PortalSync, reserved: Reserved, *, parked_too: bool = False) -> list[QueueEvent]:
    journal = sync.warehouse.journal(sync.portal)
    loaded = [entry.process_id for entry in journal if entry.status is JournalStatus.LOADED]
    if loaded:
        # Committed before a crash, not yet acknowledged: the data is safe, clear the rows now.
        sync.queue.ack(loaded)
        sync.warehouse.mark_acked(sync.portal, loaded)
        reserved.acked_on_recovery = len(loaded)
    held = (JournalStatus.RESERVED, JournalStatus.PARKED) if parked_too else (JournalStatus.RESERVED,)
    unfinished = [entry.process_id for entry in journal if entry.status in held]
    if not sync.queue.extended_mode():
        return []
    orphans = list(sync.queue.find_orphans(entry.process_id for entry in journal))
    if orphans:
        log.warning("portal %s: %d reservations not in the journal (crash before the journal write); "
                    "re-reading them", sync.portal, len(orphans))
        sync.warehouse.record_reserved(sync.portal, dict.fromkeys(orphans, 0))
    # A drain's reservation (crashed, or parked: its failed rows may still be reserved under it,
    # facts §2.10) holds error-lane rows; a change run's holds normal ones.
    reservations = _reread_both_lanes(sync, unfinished + orphans, error_lane=False)
    events = _take_over(sync, reserved, reservations)
    reserved.recovered = len([r for r in reservations if r.events])
    return events


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


def _take_over(sync: PortalSync, reserved: Reserved, reservations: Sequence[Reservation]) -> list[QueueEvent]:
    """This run processes the rows still held by ``reservations``; empty ones are finished."""
    held = {r.process_id: len(r.events) for r in reservations if r.events and r.process_id}
    drained = [r.process_id for r in reservations if not r.events and r.process_id]
    sync.warehouse.record_reserved(sync.portal, held)
    reserved.process_ids.extend(held)
    if drained:
        # Nothing is reserved under these any more (cleared earlier, moved back to the error lane,
        # or expired after ~34 days, facts §2.11): there is nothing left to load for them.
        sync.warehouse.mark_acked(sync.portal, drained)
    return [event for r in reservations for event in r.events]


def _adopt_orphans(sync: PortalSync, reserved: Reserved, *, error_lane: bool) -> list[QueueEvent]:
    if not sync.queue.extended_mode():
        return []  # clear=1: whatever the lost answer held is gone; reconciliation repairs it
    orphans = list(sync.queue.find_orphans(entry.process_id for entry in sync.warehouse.journal(sync.portal)))
    if not orphans:
        return []
    sync.warehouse.record_reserved(sync.portal, dict.fromkeys(orphans, 0))
    return _take_over(sync, reserved, _reread_both_lanes(sync, orphans, error_lane=error_lane))


def _discarded(sync: PortalSync, events: list[QueueEvent]) -> list[str]:
    """Messages an operator discarded are acknowledged without loading; a newer occurrence of the
    same message (a later change of the object moves its TIMESTAMP_X, facts §2.10) is not covered
    by the discard and is loaded. Both times come from the portal's clock, never ours."""
    failed_at = {entry.message_id: entry.last_event_at
                 for entry in sync.warehouse.error_lane(sync.portal, ParkedStatus.DISCARDED)}
    return sorted({event.message_id for event in events if event.message_id in failed_at
                   and failed_at[event.message_id] is not None and event.timestamp <= failed_at[event.message_id]})


def _write_reserved(sync: PortalSync, reserved: Reserved, events: list[QueueEvent]) -> Path:
    events_file = sync.staging_dir / "events.jsonl"
    write_events(events_file, events)
    reserved.events_file = str(events_file)
    reserved.event_count = len(events)
    if events:
        reserved.oldest_event_at = min(event.timestamp for event in events).isoformat()
    if reserved.at_most_once:
        log.warning("portal %s: DEGRADED delivery (no rest_offline_extended): %d rows were deleted from "
                    "the queue when read; schedule reconciliation", sync.portal, len(events))
    return write_json(sync.staging_dir / "reserved.json", asdict(reserved))


# --- fetch -----------------------------------------------------------------------------------


def fetch(sync: PortalSync, reserved_path: str | Path) -> Path:
    """Re-read the current state of what changed (or of everything, in a full resync)."""
    reserved = reserved_from_json(read_json(reserved_path))
    fetched = Fetched(reserved=reserved)
    if reserved.mode == "full_resync":
        for kind in sync.registry:
            fetched.tables.append(_scan_kind(sync, kind))
    else:
        discarded = set(reserved.discarded)
        events = [e for e in read_events(Path(reserved.events_file or "")) if e.message_id not in discarded]
        _fetch_changes(sync, fetched, events)
    for process_id, message_ids in fetched.failed.items():
        # Moved out of the reservation now, before anything can acknowledge it (facts §2.10).
        sync.queue.fail(process_id, message_ids, error_lane=reserved.mode == "error_lane")
    return write_json(sync.staging_dir / "fetched.json", asdict(fetched))


def _fetch_changes(sync: PortalSync, fetched: Fetched, events: list[QueueEvent]) -> None:
    plan = plan_changes(events, sync.registry)
    fetched.unknown_events = len(plan.unknown)
    for unknown in plan.unknown:
        log.warning("portal %s: queue row %s not synced: %s", sync.portal, unknown.event.row_id,
                    unknown.reason)
    events_by_object = _events_by_object(sync, events) if plan.kinds else {}
    parts: dict[str, TablePart] = {}
    for key, kind_plan in plan.kinds.items():
        part = parts[key] = new_table_part(sync, kind_plan.kind)
        part.tombstones.extend((entity_id, "deleted", kind_plan.changed_at[entity_id].isoformat())
                               for entity_id in kind_plan.tombstone_ids)
        part.events = sum(len(events_by_object.get((key, i), ())) for i in kind_plan.changed_at)
    for number, piece in enumerate(_slices(plan, CHUNK)):
        for key, result in _fetch_slice(sync, fetched, events_by_object, piece).items():
            kind_plan, part = plan.kinds[key], parts[key]
            part.tombstones.extend((entity_id, "not_found", kind_plan.changed_at[entity_id].isoformat())
                                   for entity_id in result.not_found)
            frame, bad_ids = typed_frame(sync, kind_plan.kind, part, result.records)
            _park(fetched, events_by_object, key, {i: "record unreadable (id or modification time)"
                                                    for i in bad_ids})
            stage_frame(sync, part, frame, number)
        failpoint("during_fetch")
    fetched.tables.extend(parts.values())


def _slices(plan: ChangePlan, size: int) -> Iterator[ChangePlan]:
    """The plan's fetches cut into pieces of ``size`` ids, kinds mixed: one full request each."""
    pending = [(kind_plan, list(kind_plan.fetch_ids)) for kind_plan in plan.kinds.values()]
    piece: dict[str, KindPlan] = {}
    room = size
    for kind_plan, ids in pending:
        while ids:
            taken, ids = ids[:room], ids[room:]
            piece[kind_plan.kind.key] = KindPlan(kind_plan.kind, tuple(taken), (), kind_plan.changed_at)
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


def _fetch_slice(sync: PortalSync, fetched: Fetched, events_by_object: ObjectEvents,
                 piece: ChangePlan) -> dict[str, FetchResult]:
    try:
        return fetch_changes(sync.client, piece)
    except REFUSALS as error:
        log.warning("portal %s: a fetch request was refused (%s); narrowing it down", sync.portal, error)
    results: dict[str, FetchResult] = {}
    for key, kind_plan in piece.kinds.items():
        result, refused = _fetch_isolating(sync.client, kind_plan.kind, list(kind_plan.fetch_ids))
        results[key] = result
        if refused:
            log.error("portal %s: the portal refused %d %s: %s", sync.portal, len(refused),
                      kind_plan.kind.table, sorted(refused)[:20])
            _park(fetched, events_by_object, key, refused)
    return results


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


def _scan_kind(sync: PortalSync, kind: EntityKind) -> TablePart:
    part = new_table_part(sync, kind)
    seen: list[int] = []
    for number, records in enumerate(scan(sync.client, kind)):
        frame, bad_ids = typed_frame(sync, kind, part, records)
        if bad_ids:
            log.error("portal %s: %d %s rows unreadable in the full scan: %s", sync.portal, len(bad_ids),
                      kind.table, sorted(bad_ids)[:20])
        seen.extend(int(record[kind.id_field]) for record in records)
        stage_frame(sync, part, frame, number)
    ids_file = sync.staging_dir / f"{kind.table}.scanned.parquet"
    write_frame(ids_file, pd.DataFrame({"id": pd.Series(seen, dtype="int64")}))
    part.scanned_ids_file = str(ids_file)
    return part


def new_table_part(sync: PortalSync, kind: EntityKind) -> TablePart:
    schema = table_schema(sync.client, kind)
    schema_file = write_json(sync.staging_dir / f"{kind.table}.schema.json", schema_to_json(schema))
    return TablePart(kind=kind.key, table=kind.table, schema_file=str(schema_file))


def typed_frame(sync: PortalSync, kind: EntityKind, part: TablePart,
           records: list[dict]) -> tuple[pd.DataFrame, list[int]]:
    """The chunk as a typed frame; records whose id or modification time is unreadable are singled
    out, not fatal. A value that does not fit its column is NULL and counted in ``part`` (DESIGN §3.9)."""
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


def stage_frame(sync: PortalSync, part: TablePart, frame: pd.DataFrame, number: int) -> None:
    if frame.empty:
        return
    path = write_frame(sync.staging_dir / f"{part.table}.{number:05d}.parquet", frame)
    part.chunks.append(str(path))
    part.rows += len(frame)


ObjectEvents = dict[tuple[str, int], list[QueueEvent]]  # (kind key, entity id) -> its queue rows


def _events_by_object(sync: PortalSync, events: Iterable[QueueEvent]) -> ObjectEvents:
    by_object: ObjectEvents = defaultdict(list)
    for event in events:
        target = sync.registry.resolve(event.event_name, event.event_data)
        if target.kind is not None and target.entity_id is not None:
            by_object[(target.kind.key, target.entity_id)].append(event)
    return by_object


def _park(fetched: Fetched, events_by_object: ObjectEvents, key: str, errors: Mapping[int, str]) -> None:
    """Every queue row about these objects goes to the error lane, with the reason per object."""
    for entity_id, error in errors.items():
        for event in events_by_object.get((key, entity_id), ()):
            if event.process_id:
                fetched.failures.append(FailedMessage(
                    event.message_id, event.event_name, key, entity_id, redact(error),
                    event_at=event.timestamp.isoformat(), process_id=event.process_id))


# --- commit ----------------------------------------------------------------------------------


def commit(sync: PortalSync, fetched_path: str | Path) -> Path:
    """One transaction: upserts, tombstones and the journal's *loaded* mark (DESIGN §3 step 5)."""
    fetched = fetched_from_json(read_json(fetched_path))
    committed = Committed(fetched_file=str(fetched_path))
    schemas = {part.table: schema_from_json(read_json(part.schema_file)) for part in fetched.tables}
    for schema in schemas.values():
        sync.warehouse.ensure_table(schema)
    absent = {part.table: _absent_ids(sync, part) for part in fetched.tables if part.scanned_ids_file}
    now = datetime.now(UTC)
    with sync.warehouse.transaction() as tx:
        for part in fetched.tables:
            outcome = committed.tables.setdefault(part.table, TableOutcome(part.table, events=part.events))
            outcome.add_coercions(part.coerced)
            for chunk in part.chunks:
                counts = tx.upsert(sync.portal, schemas[part.table], Path(chunk))
                outcome.rows_upserted += counts.written
                outcome.rows_ignored_older += counts.stale
            tombstones: dict[tuple[str, datetime], list[int]] = defaultdict(list)
            for entity_id, reason, at in part.tombstones:
                tombstones[(reason, datetime.fromisoformat(at))].append(entity_id)
            if absent.get(part.table):
                tombstones[("absent_in_full_scan", now)].extend(absent[part.table])
            for (reason, deleted_at), ids in tombstones.items():
                outcome.tombstones += tx.tombstone(sync.portal, schemas[part.table], ids, reason, deleted_at)
        if fetched.failures:
            tx.park(sync.portal, fetched.failures)
        if fetched.reserved.mode == "error_lane":
            failed = {failure.message_id for failure in fetched.failures}
            tx.resolve_parked(sync.portal, [event.message_id for event in _reserved_events(fetched)
                                            if event.message_id not in failed])
        if fetched.reserved.process_ids:
            tx.mark_loaded(sync.portal, fetched.reserved.process_ids)
    failpoint("after_commit")
    return write_json(sync.staging_dir / "committed.json", asdict(committed))


def _absent_ids(sync: PortalSync, part: TablePart) -> list[int]:
    seen = set(pd.read_parquet(part.scanned_ids_file)["id"].tolist())
    current = sync.warehouse.row_versions(sync.portal, part.table)
    live = current[current["_deleted_at"].isna()]["id"].tolist()
    return sorted(set(live) - seen)


# --- ack -------------------------------------------------------------------------------------


def run_once(sync: PortalSync, mode: str = "changes") -> Path:
    """All four steps in this process; returns the committed manifest (for its numbers)."""
    committed = commit(sync, fetch(sync, reserve(sync, mode)))
    ack(sync, committed)
    return committed


def ack(sync: PortalSync, committed_path: str | Path) -> int:
    """Acknowledge what is committed; returns the number of reservations cleared.

    A reservation without failures is cleared whole. One that held failed messages is cleared
    message by message (only what was loaded or discarded) and journalled *parked*, so its failed
    rows stay in the queue whether or not ``event.offline.error`` took them out of the reservation
    (facts §2.10 leaves that open for error-lane rows); the next drain re-reads it.
    """
    committed = committed_from_json(read_json(committed_path))
    fetched = fetched_from_json(read_json(committed.fetched_file))
    process_ids = fetched.reserved.process_ids
    if not process_ids:
        return 0
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
    return len(process_ids)


def _reserved_events(fetched: Fetched) -> list[QueueEvent]:
    return read_events(Path(fetched.reserved.events_file)) if fetched.reserved.events_file else []
