"""The write-back journal (``_writeback_journal``): what a write-back pushed to a portal, per object.

One row per (portal, write-back, entity kind, entity id) holds the latest push to that object: the
field values sent (and their hash), and how far it got. ``intent`` is written in a transaction of its
own before the ``batch`` request leaves; ``sent`` (the portal answered success) or ``failed`` (it
answered an error for this command, kept in ``error``) after the answer; ``done`` in the same
transaction that stores the object's re-read state. An ``intent`` or ``sent`` row found by the next
run is a push whose outcome or refresh a crash cut short: that run re-reads the object from the
portal before deciding anything, so nothing that landed is sent twice. ``not_sent`` marks an intent
the re-read proved never landed; ``obsolete`` a failure whose row no longer asks for a change.

SQL here is shared by both engines (see `journal` for the parameter style).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from connectors.warehouse.layout import Dialect

WRITEBACK_TABLE = "_writeback_journal"


class PushStatus(enum.StrEnum):
    INTENT = "intent"  # journalled before the request; the outcome is unknown until re-checked
    SENT = "sent"  # the portal answered success; the warehouse row is not refreshed yet
    DONE = "done"  # landed, and the warehouse holds the object's re-read state
    FAILED = "failed"  # the portal refused this command; retried by the next real run
    NOT_SENT = "not_sent"  # an intent the re-check found not applied (a crash before the request)
    OBSOLETE = "obsolete"  # a failure the write-back no longer asks for


UNFINISHED = (PushStatus.INTENT, PushStatus.SENT)


@dataclass(frozen=True)
class PushEntry:
    """One object's latest push. ``fields`` is the JSON text of the values sent ({field: value});
    ``error`` is already redacted; ``attempts`` counts intents (requests that carried this object)."""

    writeback: str
    entity_kind: str
    entity_id: int
    fields_hash: str
    fields: str
    status: PushStatus
    error: str | None = None
    attempts: int = 0
    updated_at: datetime | None = None
    pushed_at: datetime | None = None  # when the portal confirmed it (sent or done)

    @property
    def key(self) -> tuple[str, int]:
        return self.entity_kind, self.entity_id


COLUMNS = ("writeback", "entity_kind", "entity_id", "fields_hash", "fields", "status", "error", "attempts",
           "updated_at", "pushed_at")


def create_statements(d: Dialect) -> list[str]:
    return [f"""CREATE TABLE IF NOT EXISTS {d.qualified(WRITEBACK_TABLE)} (
            portal {d.text} NOT NULL,
            writeback {d.text} NOT NULL,
            entity_kind {d.text} NOT NULL,
            entity_id BIGINT NOT NULL,
            fields_hash {d.text} NOT NULL,
            fields {d.text} NOT NULL,
            status {d.text} NOT NULL,
            error {d.text},
            attempts INTEGER NOT NULL,
            updated_at {d.timestamp} NOT NULL,
            pushed_at {d.timestamp},
            PRIMARY KEY (portal, writeback, entity_kind, entity_id))"""]


def record(d: Dialect) -> str:
    # A new intent counts another attempt; confirmations keep the count and stamp pushed_at.
    return f"""INSERT INTO {d.qualified(WRITEBACK_TABLE)} AS w
            (portal, writeback, entity_kind, entity_id, fields_hash, fields, status, error, attempts,
             updated_at, pushed_at)
        SELECT %(portal)s::text, %(writeback)s::text, unnest(%(kinds)s::text[]), unnest(%(ids)s::bigint[]),
               unnest(%(hashes)s::text[]), unnest(%(fields)s::text[]), unnest(%(statuses)s::text[]),
               unnest(%(errors)s::text[]), unnest(%(attempts)s::integer[]), %(now)s,
               unnest(%(pushed)s::{d.timestamp}[])
        ON CONFLICT (portal, writeback, entity_kind, entity_id) DO UPDATE SET
            fields_hash = excluded.fields_hash, fields = excluded.fields, status = excluded.status,
            error = excluded.error, updated_at = excluded.updated_at,
            attempts = w.attempts + excluded.attempts,
            pushed_at = COALESCE(excluded.pushed_at, CASE WHEN excluded.status = 'intent' THEN NULL
                                                          ELSE w.pushed_at END)"""


def entries(d: Dialect) -> str:
    return f"""SELECT {", ".join(COLUMNS)} FROM {d.qualified(WRITEBACK_TABLE)}
        WHERE portal = %(portal)s::text AND writeback = %(writeback)s::text
          AND (%(status)s::text IS NULL OR status = %(status)s::text)
        ORDER BY entity_kind, entity_id LIMIT %(limit)s"""


def entry(row: tuple) -> PushEntry:
    values = dict(zip(COLUMNS, row, strict=True))
    return PushEntry(**{**values, "status": PushStatus(values["status"])})
