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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from connectors.bitrix24 import (
    ApiError,
    ChangePlan,
    EntityKind,
    FetchResult,
    KindPlan,
    MalformedRecord,
    QueueEvent,
    fetch_by_ids,
    fetch_changes,
    frame_and_coercions,
    plan_changes,
    scan,
    table_schema,
)
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
    write_events,
    write_frame,
    write_json,
)
from connectors.warehouse import JournalStatus

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
    if mode == "changes":
        events.extend(_recover(sync, reserved))
    while len(events) < sync.max_events:
        want = min(CHUNK, sync.max_events - len(events))
        result = sync.queue.reserve_errors(want) if mode == "error_lane" else sync.queue.reserve(want)
        reserved.at_most_once = reserved.at_most_once or result.at_most_once
        failpoint("after_reserve_response")
        if result.process_ids:
            counts = {r.process_id: len(r.events) for r in result.reservations if r.process_id}
            sync.warehouse.record_reserved(sync.portal, counts)
            reserved.process_ids.extend(counts)
        events.extend(result.events)
        if result.exhausted:
            break
    manifest = _write_reserved(sync, reserved, events)
    failpoint("after_reserve")
    return manifest


def _recover(sync: PortalSync, reserved: Reserved) -> list[QueueEvent]:
    journal = sync.warehouse.journal(sync.portal)
    loaded = [entry.process_id for entry in journal if entry.status is JournalStatus.LOADED]
    if loaded:
        # Committed before a crash, not yet acknowledged: the data is safe, clear the rows now.
        sync.queue.ack(loaded)
        sync.warehouse.mark_acked(sync.portal, loaded)
        reserved.acked_on_recovery = len(loaded)
    unfinished = [entry.process_id for entry in journal if entry.status is JournalStatus.RESERVED]
    if not sync.queue.extended_mode():
        return []
    orphans = list(sync.queue.find_orphans(entry.process_id for entry in journal))
    if orphans:
        log.warning("portal %s: %d reservations not in the journal (crash before the journal write); "
                    "re-reading them", sync.portal, len(orphans))
        sync.warehouse.record_reserved(sync.portal, dict.fromkeys(orphans, 0))
    reservations = sync.queue.reread_all(unfinished + orphans)
    empty = [r.process_id for r in reservations if not r.events]
    if empty:
        # An error-lane drain that crashed holds its rows in the error lane, visible only there.
        reservations = [r for r in reservations if r.events] + sync.queue.reread_all(empty, error_lane=True)
    events: list[QueueEvent] = []
    drained: list[str] = []
    for reservation in reservations:
        if reservation.events:
            reserved.process_ids.append(reservation.process_id)
            events.extend(reservation.events)
        else:
            drained.append(reservation.process_id)
    if drained:
        # Nothing is reserved under these any more (cleared earlier, or expired after ~34 days,
        # facts §2.11): there is nothing left to load for them.
        sync.warehouse.mark_acked(sync.portal, drained)
    reserved.recovered = len(unfinished) + len(orphans) - len(drained)
    return events


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
        _fetch_changes(sync, fetched, read_events(Path(reserved.events_file or "")))
    for process_id, message_ids in fetched.failed.items():
        # Moved out of the reservation now, before anything can acknowledge it (facts §2.10).
        sync.queue.fail(process_id, message_ids)
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
            _park(fetched, events_by_object, key, bad_ids)
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


def _fetch_slice(sync: PortalSync, fetched: Fetched, events_by_object: ObjectEvents,
                 piece: ChangePlan) -> dict[str, FetchResult]:
    try:
        return fetch_changes(sync.client, piece)
    except ApiError as error:
        log.warning("portal %s: a fetch request failed (%s); retrying kind by kind", sync.portal, error)
    results: dict[str, FetchResult] = {}
    for key, kind_plan in piece.kinds.items():
        try:
            results[key] = fetch_by_ids(sync.client, kind_plan.kind, kind_plan.fetch_ids)
        except ApiError as error:
            # Refused for another reason than "not found" (that is an answer): park these objects
            # in the error lane, retried by the error-lane drain (DESIGN §3 step 7).
            log.error("portal %s: fetching %d %s failed: %s", sync.portal, len(kind_plan.fetch_ids),
                      kind_plan.kind.table, error)
            _park(fetched, events_by_object, key, kind_plan.fetch_ids)
    return results


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


def _park(fetched: Fetched, events_by_object: ObjectEvents, key: str, ids: Sequence[int]) -> None:
    for entity_id in ids:
        for event in events_by_object.get((key, entity_id), ()):
            if event.process_id:
                fetched.failed.setdefault(event.process_id, []).append(event.message_id)


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
    """Acknowledge what is committed; returns the number of reservations cleared."""
    committed = committed_from_json(read_json(committed_path))
    process_ids = fetched_from_json(read_json(committed.fetched_file)).reserved.process_ids
    if not process_ids:
        return 0
    sync.queue.ack(process_ids)
    sync.warehouse.mark_acked(sync.portal, process_ids)
    sync.warehouse.prune_journal(sync.portal, acked_before=datetime.now(UTC) - JOURNAL_KEEP)
    return len(process_ids)
