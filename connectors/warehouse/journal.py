"""The CDC journal and the sync log: what the warehouse remembers about offline-event reservations.

DESIGN §3: every ``process_id`` is journalled ``reserved`` in its own short transaction before its
events are processed, becomes ``loaded`` in the same transaction as the data it produced, and
``acked`` once ``event.offline.clear`` succeeded. Recovery reads the journal by status: ``loaded``
entries are acked again, ``reserved`` ones re-read with ``event.offline.get process_id=P``. A
reservation that held failures is acknowledged message by message and becomes ``parked``: the
error-lane drain re-reads it (the facts sheet leaves open whether its rows are still reserved).

The error-lane ledger (``_error_lane``) keeps one row per parked message: attempts, the last error,
and how it left the lane (``loaded``, or ``discarded`` by whom and why). Nothing leaves the lane
otherwise (DESIGN §3 step 7).

SQL here is shared by both engines: parameters are written ``%(name)s`` (psycopg's style; the DuckDB
backend rewrites them) and tables are qualified by the engine's `Dialect`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from connectors.warehouse import writeback_ledger
from connectors.warehouse.layout import Dialect

JOURNAL_TABLE = "_cdc_journal"
RUNS_TABLE = "_sync_runs"
ERROR_LANE_TABLE = "_error_lane"


class JournalStatus(enum.StrEnum):
    RESERVED = "reserved"
    LOADED = "loaded"
    ACKED = "acked"
    PARKED = "parked"  # acknowledged except its failed messages, which may still sit under it


class ParkedStatus(enum.StrEnum):
    PARKED = "parked"  # in the error lane, retried by the drain
    LOADED = "loaded"  # a later attempt loaded it
    DISCARDED = "discarded"  # an operator gave it up on purpose


@dataclass(frozen=True)
class FailedMessage:
    """One queue message whose object could not be loaded; ``error`` is already redacted."""

    message_id: str
    event_name: str
    entity_kind: str | None
    entity_id: int | None
    error: str
    event_at: str | None = None  # the failed row's TIMESTAMP_X (ISO 8601): the portal's clock
    process_id: str = ""  # the reservation it came from (the ledger does not keep it)


@dataclass(frozen=True)
class ErrorLaneEntry:
    portal: str
    message_id: str
    event_name: str
    entity_kind: str | None
    entity_id: int | None
    status: ParkedStatus
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    last_error: str | None
    last_event_at: datetime | None = None  # TIMESTAMP_X of the last failed occurrence (portal clock)
    resolved_at: datetime | None = None  # loaded or discarded at
    discarded_by: str | None = None
    discard_reason: str | None = None


@dataclass(frozen=True)
class JournalEntry:
    portal: str
    process_id: str
    status: JournalStatus
    event_count: int
    reserved_at: datetime
    loaded_at: datetime | None = None
    acked_at: datetime | None = None


@dataclass(frozen=True)
class SyncRun:
    """One row of the sync log (``_sync_runs``): written by the reserve step as *running*, closed by
    the ack step (*succeeded*) or by the next run's reserve (*failed*: it never reached its ack)."""

    run_id: str
    portal: str
    started_at: datetime
    finished_at: datetime | None = None
    status: str = "running"  # running | succeeded | failed
    events: int = 0
    rows_upserted: int = 0
    rows_tombstoned: int = 0
    requests: int = 0
    errors: int = 0
    error_summary: str | None = None  # already redacted by the caller
    mode: str = "changes"  # connectors.sync.staging.SyncMode


def create_statements(d: Dialect) -> list[str]:
    journal, runs = d.qualified(JOURNAL_TABLE), d.qualified(RUNS_TABLE)
    return [
        f"""CREATE TABLE IF NOT EXISTS {journal} (
            portal {d.text} NOT NULL,
            process_id {d.text} NOT NULL,
            status {d.text} NOT NULL,
            event_count INTEGER NOT NULL,
            reserved_at {d.timestamp} NOT NULL,
            loaded_at {d.timestamp},
            acked_at {d.timestamp},
            PRIMARY KEY (portal, process_id))""",
        f"""CREATE TABLE IF NOT EXISTS {runs} (
            run_id {d.text} PRIMARY KEY,
            portal {d.text} NOT NULL,
            started_at {d.timestamp} NOT NULL,
            finished_at {d.timestamp},
            status {d.text} NOT NULL,
            events BIGINT NOT NULL,
            rows_upserted BIGINT NOT NULL,
            rows_tombstoned BIGINT NOT NULL,
            requests BIGINT NOT NULL,
            errors BIGINT NOT NULL,
            error_summary {d.text},
            mode {d.text})""",
        # Sync logs made before the mode was recorded.
        f"ALTER TABLE {runs} ADD COLUMN IF NOT EXISTS mode {d.text}",
        f"""CREATE TABLE IF NOT EXISTS {d.qualified(ERROR_LANE_TABLE)} (
            portal {d.text} NOT NULL,
            message_id {d.text} NOT NULL,
            event_name {d.text} NOT NULL,
            entity_kind {d.text},
            entity_id BIGINT,
            status {d.text} NOT NULL,
            attempts INTEGER NOT NULL,
            first_failed_at {d.timestamp} NOT NULL,
            last_failed_at {d.timestamp} NOT NULL,
            last_error {d.text},
            last_event_at {d.timestamp},
            resolved_at {d.timestamp},
            discarded_by {d.text},
            discard_reason {d.text},
            PRIMARY KEY (portal, message_id))""",
        *writeback_ledger.create_statements(d),
    ]


def reserve(d: Dialect) -> str:
    # A process id journalled again (recovery re-reads it) keeps its status, except that a parked
    # one taken back by a drain is reserved again; only those take the new event count.
    return f"""INSERT INTO {d.qualified(JOURNAL_TABLE)} AS j
            (portal, process_id, status, event_count, reserved_at)
        SELECT %(portal)s::text, unnest(%(process_ids)s::text[]), 'reserved',
               unnest(%(event_counts)s::integer[]), %(now)s
        ON CONFLICT (portal, process_id) DO UPDATE SET event_count = excluded.event_count, status = 'reserved'
        WHERE j.status IN ('reserved', 'parked')"""


def unknown_process_ids(d: Dialect) -> str:
    return f"""SELECT unnest(%(process_ids)s::text[])
        EXCEPT SELECT process_id FROM {d.qualified(JOURNAL_TABLE)} WHERE portal = %(portal)s::text"""


def mark_loaded(d: Dialect) -> str:
    return f"""UPDATE {d.qualified(JOURNAL_TABLE)} SET status = 'loaded', loaded_at = %(now)s
        WHERE portal = %(portal)s::text AND status = 'reserved'
          AND process_id IN (SELECT unnest(%(process_ids)s::text[]))"""


def mark_acked(d: Dialect) -> str:
    return f"""UPDATE {d.qualified(JOURNAL_TABLE)} SET status = 'acked', acked_at = %(now)s
        WHERE portal = %(portal)s::text AND status <> 'acked'
          AND process_id IN (SELECT unnest(%(process_ids)s::text[]))"""


def mark_parked(d: Dialect) -> str:
    return f"""UPDATE {d.qualified(JOURNAL_TABLE)} SET status = 'parked', acked_at = %(now)s
        WHERE portal = %(portal)s::text AND status <> 'acked'
          AND process_id IN (SELECT unnest(%(process_ids)s::text[]))"""


def entries(d: Dialect) -> str:
    return f"""SELECT portal, process_id, status, event_count, reserved_at, loaded_at, acked_at
        FROM {d.qualified(JOURNAL_TABLE)}
        WHERE portal = %(portal)s::text AND (%(status)s::text IS NULL OR status = %(status)s::text)
        ORDER BY reserved_at, process_id"""


def prune(d: Dialect) -> str:
    return f"""DELETE FROM {d.qualified(JOURNAL_TABLE)}
        WHERE portal = %(portal)s::text AND status = 'acked' AND acked_at < %(before)s"""


def entry(row: tuple) -> JournalEntry:
    portal, process_id, status, event_count, reserved_at, loaded_at, acked_at = row
    return JournalEntry(portal, process_id, JournalStatus(status), event_count, reserved_at, loaded_at,
                        acked_at)


RUN_COLUMNS = ("run_id", "portal", "started_at", "finished_at", "status", "events", "rows_upserted",
               "rows_tombstoned", "requests", "errors", "error_summary", "mode")


def log_run(d: Dialect) -> str:
    columns = ", ".join(RUN_COLUMNS)
    values = ", ".join(f"%({name})s" for name in RUN_COLUMNS)
    updates = ", ".join(f"{name} = excluded.{name}" for name in RUN_COLUMNS if name != "run_id")
    return f"""INSERT INTO {d.qualified(RUNS_TABLE)} ({columns}) VALUES ({values})
        ON CONFLICT (run_id) DO UPDATE SET {updates}"""


def runs(d: Dialect) -> str:
    return f"""SELECT {", ".join(RUN_COLUMNS)} FROM {d.qualified(RUNS_TABLE)}
        WHERE %(portal)s::text IS NULL OR portal = %(portal)s::text
        ORDER BY started_at DESC, run_id LIMIT %(limit)s"""


# --- the error-lane ledger -------------------------------------------------------------------

ERROR_LANE_COLUMNS = ("portal", "message_id", "event_name", "entity_kind", "entity_id", "status", "attempts",
                      "first_failed_at", "last_failed_at", "last_error", "last_event_at", "resolved_at",
                      "discarded_by", "discard_reason")


def park(d: Dialect) -> str:
    # A message failing again counts another attempt; one that had left the lane starts over.
    return f"""INSERT INTO {d.qualified(ERROR_LANE_TABLE)} AS e
            (portal, message_id, event_name, entity_kind, entity_id, status, attempts, first_failed_at,
             last_failed_at, last_error, last_event_at)
        SELECT %(portal)s::text, unnest(%(message_ids)s::text[]), unnest(%(event_names)s::text[]),
               unnest(%(kinds)s::text[]), unnest(%(entity_ids)s::bigint[]), 'parked', 1, %(now)s, %(now)s,
               unnest(%(errors)s::text[]), unnest(%(event_ats)s::{d.timestamp}[])
        ON CONFLICT (portal, message_id) DO UPDATE SET
            attempts = CASE WHEN e.status = 'parked' THEN e.attempts + 1 ELSE 1 END,
            first_failed_at = CASE WHEN e.status = 'parked' THEN e.first_failed_at ELSE excluded.first_failed_at END,
            status = 'parked', last_failed_at = excluded.last_failed_at, last_error = excluded.last_error,
            last_event_at = excluded.last_event_at,
            event_name = excluded.event_name, resolved_at = NULL, discarded_by = NULL, discard_reason = NULL"""


def resolve_parked(d: Dialect) -> str:
    return f"""UPDATE {d.qualified(ERROR_LANE_TABLE)} SET status = 'loaded', resolved_at = %(now)s
        WHERE portal = %(portal)s::text AND status = 'parked'
          AND message_id IN (SELECT unnest(%(message_ids)s::text[]))"""


def discard(d: Dialect) -> str:
    return f"""UPDATE {d.qualified(ERROR_LANE_TABLE)}
        SET status = 'discarded', resolved_at = %(now)s, discarded_by = %(by)s, discard_reason = %(reason)s
        WHERE portal = %(portal)s::text AND status = 'parked'
          AND message_id IN (SELECT unnest(%(message_ids)s::text[]))"""


def error_lane_entries(d: Dialect) -> str:
    return f"""SELECT {", ".join(ERROR_LANE_COLUMNS)} FROM {d.qualified(ERROR_LANE_TABLE)}
        WHERE portal = %(portal)s::text AND (%(status)s::text IS NULL OR status = %(status)s::text)
        ORDER BY last_failed_at DESC, message_id LIMIT %(limit)s"""


def error_lane_entry(row: tuple) -> ErrorLaneEntry:
    values = dict(zip(ERROR_LANE_COLUMNS, row, strict=True))
    return ErrorLaneEntry(**{**values, "status": ParkedStatus(values["status"])})
