"""The one small interface every destination implements: `Warehouse` and its `Transaction`.

Typical use by the CDC loop (DESIGN §3)::

    wh.record_reserved(portal, {process_id: event_count})     # own transaction, before fetching
    with wh.transaction() as tx:                               # one commit per batch
        tx.upsert(portal, schema, frame)
        tx.tombstone(portal, schema, deleted_ids, reason="deleted in Bitrix24")
        tx.mark_loaded(portal, [process_id])
    wh.mark_acked(portal, [process_id])                        # after event.offline.clear
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from types import TracebackType

import pandas as pd

from connectors.tables import TableSchema
from connectors.warehouse.evolution import SchemaChanges
from connectors.warehouse.frames import Rows
from connectors.warehouse.journal import (
    ErrorLaneEntry,
    FailedMessage,
    JournalEntry,
    JournalStatus,
    ParkedStatus,
    SyncRun,
)
from connectors.warehouse.writeback_ledger import PushEntry, PushStatus


@dataclass(frozen=True)
class UpsertCounts:
    """What one upsert did with the rows it received (see `versioning` for the rules)."""

    received: int = 0
    inserted: int = 0
    updated: int = 0
    revived: int = 0  # tombstoned, and this version is newer than the deletion: live again
    unchanged: int = 0  # same content as stored: nothing written
    stale: int = 0  # older than the stored version: ignored
    tombstoned: int = 0  # the id was deleted after this version: ignored
    duplicates: int = 0  # an earlier state of an id that appeared twice in the same frame

    @property
    def written(self) -> int:
        """Rows inserted, updated or revived, which is also the number of history rows added."""
        return self.inserted + self.updated + self.revived

    def __add__(self, other: UpsertCounts) -> UpsertCounts:
        return UpsertCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


class Transaction(ABC):
    """Writes that commit together, or not at all: entity rows, tombstones, journal ``loaded`` marks."""

    @abstractmethod
    def upsert(self, portal: str, schema: TableSchema, rows: Rows, *, overwrite: bool = False) -> UpsertCounts:
        """Insert or update entity rows keyed by (portal, id); creates or evolves the table as needed.

        With ``overwrite`` a version older than the stored live row still replaces it (reconciliation
        repairing a row the warehouse holds newer than the portal); history starts the corrected
        version at the time of the correction. Tombstones give way only to newer versions either way."""

    @abstractmethod
    def tombstone(self, portal: str, table: TableSchema | str, ids: Iterable[int], reason: str,
                  deleted_at: datetime | None = None) -> int:
        """Soft-delete ids (also ids never seen); returns how many were not deleted before."""

    @abstractmethod
    def mark_loaded(self, portal: str, process_ids: Iterable[str]) -> int:
        """Journal process ids as ``loaded`` with this transaction's data; unknown ids raise."""

    @abstractmethod
    def park(self, portal: str, failures: Iterable[FailedMessage]) -> int:
        """Record messages moved to the error lane (attempts + 1, last error); returns how many."""

    @abstractmethod
    def resolve_parked(self, portal: str, message_ids: Iterable[str]) -> int:
        """Parked messages whose objects this transaction loaded leave the lane as ``loaded``."""

    @abstractmethod
    def record_pushes(self, portal: str, entries: Iterable[PushEntry]) -> int:
        """Write-back journal rows committed with this transaction's data (``done`` with the re-read
        objects); returns how many."""


class Warehouse(ABC):
    """A destination for entity tables, the CDC journal and the sync log."""

    @abstractmethod
    def ensure_table(self, schema: TableSchema) -> SchemaChanges:
        """Create the table, history and current view, or add the columns of new user fields."""

    @abstractmethod
    def entity_tables(self) -> list[str]:
        """Names of the entity tables present (those with a ``_history`` twin), sorted."""

    @abstractmethod
    def exclusive(self, name: str) -> AbstractContextManager[None]:
        """Hold the section ``name`` (e.g. one write-back on one portal) against every other holder
        of this warehouse, in any process, for the block; raises `WarehouseBusy` at once if it is
        held. Released when the block ends, or when the holder's process or connection dies."""

    @abstractmethod
    def transaction(self, *, publish: bool = True) -> AbstractContextManager[Transaction]:
        """One atomic unit of writes; rolled back if the block raises. ``publish=False``: a step
        of a larger whole, so the analysts' snapshot (DuckDB) waits for the last one."""

    @abstractmethod
    def record_reserved(self, portal: str, reserved: Mapping[str, int]) -> None:
        """Journal ``process_id -> event count`` as ``reserved``, in a transaction of its own."""

    @abstractmethod
    def journal(self, portal: str, status: JournalStatus | None = None) -> list[JournalEntry]:
        """Journal entries of a portal, oldest first; recovery asks for one status."""

    @abstractmethod
    def mark_acked(self, portal: str, process_ids: Iterable[str]) -> int:
        """Journal process ids as ``acked`` after ``event.offline.clear`` succeeded."""

    @abstractmethod
    def mark_parked(self, portal: str, process_ids: Iterable[str]) -> int:
        """Journal process ids as ``parked``: acknowledged except their failed messages."""

    @abstractmethod
    def error_lane(self, portal: str, status: ParkedStatus | None = ParkedStatus.PARKED,
                   limit: int = 1000) -> list[ErrorLaneEntry]:
        """The error-lane ledger of a portal (parked messages by default), latest failure first."""

    @abstractmethod
    def discard(self, portal: str, message_ids: Iterable[str], *, by: str, reason: str) -> int:
        """An operator gives parked messages up: the next drain acknowledges them without loading.

        Returns how many were parked; raises `WarehouseError` if ``by`` or ``reason`` is empty.
        """

    @abstractmethod
    def prune_journal(self, portal: str, acked_before: datetime) -> int:
        """Forget entries acked before a time; returns how many were removed."""

    @abstractmethod
    def log_run(self, run: SyncRun) -> None:
        """Insert or update one row of the sync log (keyed by run id)."""

    @abstractmethod
    def runs(self, portal: str | None = None, limit: int = 50) -> list[SyncRun]:
        """The latest sync log rows, newest first."""

    @abstractmethod
    def row_versions(self, portal: str, table: str) -> pd.DataFrame:
        """``id, _source_modified_at, _deleted_at`` of every stored row, for reconciliation."""

    @abstractmethod
    def portal_row_counts(self, portal: str) -> dict[str, int]:
        """``{table: rows}`` of ``portal`` in every table `purge_portal` deletes from, for the tables
        that have any: what a purge would delete."""

    @abstractmethod
    def purge_portal(self, portal: str) -> dict[str, int]:
        """Delete every row the warehouse holds for ``portal`` (entity tables, histories, dimensions,
        journal, ledgers), in one transaction; ``{table: rows deleted}`` for the tables that had any.

        Never called by the sync: an uninstalled portal keeps its data until an operator purges it
        (``python -m connectors.sync.purge``)."""

    @abstractmethod
    def query(self, sql: str, params: Mapping[str, object] | None = None) -> list[tuple]:
        """Run a read query (asset checks, tests); parameters are written ``%(name)s``."""

    @abstractmethod
    def query_frame(self, sql: str, params: Mapping[str, object] | None = None) -> pd.DataFrame:
        """A read query's rows with their column names (a write-back's declared query)."""

    @abstractmethod
    def record_pushes(self, portal: str, entries: Iterable[PushEntry]) -> int:
        """Write-back journal rows (`writeback_ledger`), in a transaction of their own: an ``intent``
        must be committed before its request leaves. Returns how many."""

    @abstractmethod
    def pushes(self, portal: str, writeback: str, status: PushStatus | None = None,
               limit: int = 100_000) -> list[PushEntry]:
        """The write-back journal of one write-back on a portal, by entity kind and id."""

    @abstractmethod
    def relation(self, name: str) -> str:
        """The quoted, schema-qualified SQL name of a warehouse table or view."""

    @abstractmethod
    def publish_snapshot(self) -> Path | None:
        """Publish the read-only copy for analysts now; None where the engine needs none."""

    def release_memory(self) -> None:
        """Give back what the engine caches in this process between steps (a no-op where the engine
        lives in its own server). Called after a commit step; the next statement reads from disk."""
        return None

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

