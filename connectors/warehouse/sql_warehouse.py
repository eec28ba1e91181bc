"""The engine-neutral half of a SQL warehouse: table evolution, transactions, journal, sync log.

An engine subclass supplies the primitives (run a statement, read the catalog, open an atomic
scope) and the one thing that differs in substance: how staged rows are written (`_write_rows`).
"""

from __future__ import annotations

import logging
import threading
from abc import abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from connectors.tables import TableSchema, check_identifier
from connectors.warehouse import ddl, journal, versioning, writeback_ledger
from connectors.warehouse.errors import (
    TableNotFound,
    TransactionStateError,
    UnknownProcessIds,
    WarehouseBusy,
    WarehouseError,
)
from connectors.warehouse.evolution import SchemaChanges, TypeConflict, plan_changes
from connectors.warehouse.frames import Rows, StagedRows, stage
from connectors.warehouse.interface import Transaction, UpsertCounts, Warehouse
from connectors.warehouse.journal import (
    ErrorLaneEntry,
    FailedMessage,
    JournalEntry,
    JournalStatus,
    ParkedStatus,
    SyncRun,
)
from connectors.warehouse.layout import HISTORY_SUFFIX, Dialect, TableNames
from connectors.warehouse.writeback_ledger import PushEntry, PushStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _KnownTable:
    schema: TableSchema
    conflicts: tuple[TypeConflict, ...]

    @property
    def null_columns(self) -> frozenset[str]:
        return frozenset(conflict.column for conflict in self.conflicts)


# Exclusive sections held in this process: (warehouse, name); see `SqlWarehouse.exclusive`.
_HELD: set[tuple[str, str]] = set()
_HELD_LOCK = threading.Lock()


class SqlWarehouse(Warehouse):
    dialect: Dialect

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        # Tables ensured by this process, so upserts skip catalog checks for a schema already seen.
        self._known: dict[str, _KnownTable] = {}
        self._touched_in_transaction: set[str] = set()
        self._in_transaction = False

    # -- primitives supplied by an engine -------------------------------------------------------

    @abstractmethod
    def _execute(self, sql: str, params: Mapping[str, object] | None = None) -> int:
        """Run one statement; returns the number of rows it changed."""

    @abstractmethod
    def _query(self, sql: str, params: Mapping[str, object] | None = None) -> list[tuple]: ...

    @abstractmethod
    def _query_frame(self, sql: str, params: Mapping[str, object]) -> pd.DataFrame: ...

    @abstractmethod
    def _stored_columns(self, table: str) -> dict[str, str] | None:
        """Column name -> catalog type of a table in table order, or None if it does not exist."""

    @abstractmethod
    def _table_names(self) -> set[str]:
        """Base tables in the warehouse's namespace."""

    @abstractmethod
    def _atomic(self) -> AbstractContextManager[None]:
        """A database transaction: commit on success, roll back if the block raises."""

    @abstractmethod
    def _write_rows(self, portal: str, table: str, staged: StagedRows,
                    null_columns: frozenset[str], overwrite: bool) -> dict[str, int]:
        """Apply staged rows by the `versioning` rules; returns rows per action."""

    def _lock_ddl(self) -> None:
        """Serialize DDL between processes where several may write (PostgreSQL)."""

    def _drop_dependent_views(self, names: TableNames) -> list[str]:
        """DDL dropping views (outside the table's own ``_current``) that would block retyping a
        column of ``names``' table or history; their owners create them again (PostgreSQL)."""
        return []

    def _rebuild_analytics_after_migration(self) -> None:
        """Rebuild the analysts' schema, if published, in the open transaction that retyped a column.

        PostgreSQL dropped the analysts' views reading the column (`_drop_dependent_views`), and its
        ``<table>_as_of`` functions declare the old types; rebuilt here, they commit (or roll back)
        with the migration instead of missing until the next reference refresh. DuckDB keeps its
        views, but their catalog entries keep the old column types until they are created again."""
        # Imported here: the analysts' schema is built on top of this module (it imports it).
        from connectors.warehouse.analytics import rebuild_published_analytics

        rebuild_published_analytics(self)

    def _create_extras(self, table: str) -> list[str]:
        """Engine-specific DDL run once when an entity table is created (indexes)."""
        return []

    def _forget_transaction_state(self) -> None:
        """Drop caches of objects a rolled back transaction may have created."""

    def _after_commit(self) -> None:
        """Called after every committed `transaction` (DuckDB publishes its snapshot here)."""

    # -- tables ---------------------------------------------------------------------------------

    def ensure_table(self, schema: TableSchema) -> SchemaChanges:
        known = self._known.get(schema.name)
        if known is not None and known.schema == schema:
            return SchemaChanges(schema.name, conflicts=known.conflicts)
        if self._in_transaction:
            return self._evolve(schema)
        try:
            with self._atomic():
                return self._evolve(schema)
        except BaseException:
            self._known.pop(schema.name, None)
            self._forget_transaction_state()
            raise

    def _ensure_known(self, schema: TableSchema) -> _KnownTable:
        known = self._known.get(schema.name)
        if known is None or known.schema != schema:
            self._evolve(schema)
            known = self._known[schema.name]
        return known

    def _evolve(self, schema: TableSchema) -> SchemaChanges:
        names = TableNames.of(schema.name)
        self._lock_ddl()
        changes = plan_changes(schema, self._stored_columns(names.table), self.dialect)
        statements: list[str] = []
        if changes.created:
            statements += ddl.create_statements(self.dialect, schema) + self._create_extras(schema.name)
        for column in changes.added:
            statements += ddl.add_column_statements(self.dialect, schema.name, column)
        if changes.migrated:
            statements += self._drop_dependent_views(names)
            statements.append(ddl.drop_current_view_statement(self.dialect, schema.name))
        for migration in changes.migrated:
            statements += ddl.alter_type_statements(self.dialect, schema.name, migration.column,
                                                    migration.schema_type, migration.using)
        if changes.changed:
            for statement in statements:
                self._execute(statement)
            stored = self._stored_columns(names.table) or {}
            self._execute(ddl.current_view_statement(self.dialect, schema.name, list(stored)))
            for statement in ddl.comment_statements(self.dialect, schema):
                self._execute(statement)
            if changes.migrated:
                self._rebuild_analytics_after_migration()
            log.info("%s: %s", schema.name, "created" if changes.created
                     else f"added columns {[c.name for c in changes.added]}, migrated "
                          f"{[(m.column, m.stored_type, m.schema_type.value) for m in changes.migrated]}")
        self._known[schema.name] = _KnownTable(schema, changes.conflicts)
        if self._in_transaction:
            self._touched_in_transaction.add(schema.name)
        return changes

    def entity_tables(self) -> list[str]:
        names = self._table_names()
        return sorted(name for name in names
                      if not name.startswith("_") and f"{name}{HISTORY_SUFFIX}" in names)

    def _require_table(self, table: TableSchema | str) -> str:
        if isinstance(table, TableSchema):
            self._ensure_known(table)
            return table.name
        check_identifier(table)
        if table not in self._known and self._stored_columns(TableNames.of(table).table) is None:
            raise TableNotFound(f"no table {table!r}; create it with ensure_table first")
        return table

    def limit_lock_wait(self, seconds: float) -> None:
        """Inside a transaction: make its statements give up (raise) after waiting ``seconds`` for a
        lock another session holds. Nothing on an engine whose file has one writer (DuckDB)."""

    # -- exclusive sections ---------------------------------------------------------------------

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        # Held per process: enough for an engine whose file one process opens at a time (DuckDB
        # locks it); an engine shared by processes overrides this (PostgreSQL: advisory locks).
        key = (repr(self), name)
        with _HELD_LOCK:
            if key in _HELD:
                raise WarehouseBusy(f"{name!r} is held by another run of this process")
            _HELD.add(key)
        try:
            yield
        finally:
            with _HELD_LOCK:
                _HELD.discard(key)

    # -- transactions ---------------------------------------------------------------------------

    @contextmanager
    def transaction(self, *, publish: bool = True) -> Iterator[Transaction]:
        if self._in_transaction:
            raise TransactionStateError("a transaction is already open on this warehouse")
        tx = SqlTransaction(self)
        self._in_transaction = True
        try:
            with self._atomic():
                yield tx
        except BaseException:
            for name in self._touched_in_transaction:
                self._known.pop(name, None)
            self._forget_transaction_state()
            raise
        finally:
            tx.open = False
            self._in_transaction = False
            self._touched_in_transaction.clear()
        if publish:
            self._after_commit()

    def _outside_transaction(self, what: str) -> None:
        # These writes must survive a rollback of the data transaction (DESIGN §3: reserve before
        # processing, ack after the commit), so they refuse to join one.
        if self._in_transaction:
            raise TransactionStateError(f"{what} runs in its own transaction; call it outside transaction()")

    # -- journal and sync log -------------------------------------------------------------------

    def record_reserved(self, portal: str, reserved: Mapping[str, int]) -> None:
        self._outside_transaction("record_reserved")
        if not reserved:
            return
        process_ids = list(reserved)
        counts = [int(reserved[p]) for p in process_ids]
        with self._atomic():
            self._execute(journal.reserve(self.dialect), {
                "portal": portal, "process_ids": process_ids, "event_counts": counts, "now": _now()})

    def journal(self, portal: str, status: JournalStatus | None = None) -> list[JournalEntry]:
        rows = self._query(journal.entries(self.dialect), {
            "portal": portal, "status": None if status is None else JournalStatus(status).value})
        return [journal.entry(row) for row in rows]

    def mark_acked(self, portal: str, process_ids: Iterable[str]) -> int:
        self._outside_transaction("mark_acked")
        with self._atomic():
            return self._transition(journal.mark_acked(self.dialect), portal, process_ids)

    def _transition(self, statement: str, portal: str, process_ids: Iterable[str]) -> int:
        ids = list(dict.fromkeys(process_ids))
        if not ids:
            return 0
        params = {"portal": portal, "process_ids": ids, "now": _now()}
        unknown = self._query(journal.unknown_process_ids(self.dialect), params)
        if unknown:
            raise UnknownProcessIds(portal, (row[0] for row in unknown))
        return self._execute(statement, params)

    def mark_parked(self, portal: str, process_ids: Iterable[str]) -> int:
        self._outside_transaction("mark_parked")
        with self._atomic():
            return self._transition(journal.mark_parked(self.dialect), portal, process_ids)

    def error_lane(self, portal: str, status: ParkedStatus | None = ParkedStatus.PARKED,
                   limit: int = 1000) -> list[ErrorLaneEntry]:
        rows = self._query(journal.error_lane_entries(self.dialect), {
            "portal": portal, "status": None if status is None else ParkedStatus(status).value,
            "limit": int(limit)})
        return [journal.error_lane_entry(row) for row in rows]

    def discard(self, portal: str, message_ids: Iterable[str], *, by: str, reason: str) -> int:
        self._outside_transaction("discard")
        if not by.strip() or not reason.strip():
            raise WarehouseError("discarding from the error lane needs who (by) and why (reason)")
        ids = list(dict.fromkeys(message_ids))
        if not ids:
            return 0
        with self._atomic():
            return self._execute(journal.discard(self.dialect), {
                "portal": portal, "message_ids": ids, "by": by, "reason": reason, "now": _now()})

    def prune_journal(self, portal: str, acked_before: datetime) -> int:
        self._outside_transaction("prune_journal")
        with self._atomic():
            return self._execute(journal.prune(self.dialect), {"portal": portal,
                                                               "before": _aware(acked_before)})

    def log_run(self, run: SyncRun) -> None:
        self._outside_transaction("log_run")
        with self._atomic():
            self._execute(journal.log_run(self.dialect),
                          {name: getattr(run, name) for name in journal.RUN_COLUMNS})

    def runs(self, portal: str | None = None, limit: int = 50) -> list[SyncRun]:
        rows = self._query(journal.runs(self.dialect), {"portal": portal, "limit": int(limit)})
        return [SyncRun(*row) for row in rows]

    def _portal_keyed_tables(self) -> list[str]:
        return sorted(name for name in self._table_names() if "portal" in (self._stored_columns(name) or {}))

    def portal_row_counts(self, portal: str) -> dict[str, int]:
        counts = {}
        for table in self._portal_keyed_tables():
            [(count,)] = self._query(f"SELECT count(*) FROM {self.dialect.qualified(table)} WHERE portal = %(portal)s",
                                     {"portal": portal})
            if count:
                counts[table] = int(count)
        return counts

    def purge_portal(self, portal: str) -> dict[str, int]:
        tables = self._portal_keyed_tables()
        deleted: dict[str, int] = {}
        if self._in_transaction:
            raise TransactionStateError("a transaction is already open on this warehouse")
        self._in_transaction = True
        try:
            with self._atomic():
                for table in tables:
                    count = self._execute(f"DELETE FROM {self.dialect.qualified(table)} WHERE portal = %(portal)s",
                                          {"portal": portal})
                    if count:
                        deleted[table] = count
        finally:
            self._in_transaction = False
        self._after_commit()
        return deleted

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> list[tuple]:
        # Always with parameters, so '%%' means a literal '%' on both engines.
        return self._query(sql, params or {})

    def query_frame(self, sql: str, params: Mapping[str, object] | None = None) -> pd.DataFrame:
        return self._query_frame(sql, params or {})

    def record_pushes(self, portal: str, entries: Iterable[PushEntry]) -> int:
        self._outside_transaction("record_pushes")
        with self._atomic():
            return self._record_pushes(portal, entries)

    def _record_pushes(self, portal: str, entries: Iterable[PushEntry]) -> int:
        by_writeback: dict[str, dict[tuple[str, int], PushEntry]] = {}
        for entry in entries:
            by_writeback.setdefault(entry.writeback, {})[entry.key] = entry
        now = _now()
        for writeback, unique in by_writeback.items():
            rows = list(unique.values())
            self._execute(writeback_ledger.record(self.dialect), {
                "portal": portal, "writeback": writeback, "now": now,
                "kinds": [e.entity_kind for e in rows], "ids": [int(e.entity_id) for e in rows],
                "hashes": [e.fields_hash for e in rows], "fields": [e.fields for e in rows],
                "statuses": [PushStatus(e.status).value for e in rows],
                "errors": [None if e.error is None else e.error[:2000] for e in rows],
                "attempts": [1 if e.status is PushStatus.INTENT else 0 for e in rows],
                "pushed": [now if e.status in (PushStatus.SENT, PushStatus.DONE) else None for e in rows]})
        return sum(len(unique) for unique in by_writeback.values())

    def pushes(self, portal: str, writeback: str, status: PushStatus | None = None,
               limit: int = 100_000) -> list[PushEntry]:
        rows = self._query(writeback_ledger.entries(self.dialect), {
            "portal": portal, "writeback": writeback,
            "status": None if status is None else PushStatus(status).value, "limit": int(limit)})
        return [writeback_ledger.entry(row) for row in rows]

    def relation(self, name: str) -> str:
        return self.dialect.qualified(name)

    def row_versions(self, portal: str, table: str) -> pd.DataFrame:
        name = self._require_table(table)
        return self._query_frame(versioning.row_versions(self.dialect, name), {"portal": portal})


class SqlTransaction(Transaction):
    def __init__(self, warehouse: SqlWarehouse) -> None:
        self.warehouse = warehouse
        self.open = True

    def _check_open(self) -> None:
        if not self.open:
            raise TransactionStateError("this transaction has already ended")

    def upsert(self, portal: str, schema: TableSchema, rows: Rows, *, overwrite: bool = False) -> UpsertCounts:
        self._check_open()
        known = self.warehouse._ensure_known(schema)
        staged = stage(schema, rows, null_columns=known.null_columns)
        received = staged.table.num_rows + staged.duplicates
        if staged.table.num_rows == 0:
            return UpsertCounts(received=received, duplicates=staged.duplicates)
        actions = self.warehouse._write_rows(portal, schema.name, staged, known.null_columns, overwrite)
        return UpsertCounts(
            received=received,
            inserted=actions.get(versioning.INSERT, 0),
            updated=actions.get(versioning.UPDATE, 0),
            revived=actions.get(versioning.REVIVE, 0),
            unchanged=actions.get(versioning.UNCHANGED, 0),
            stale=actions.get(versioning.STALE, 0),
            tombstoned=actions.get(versioning.TOMBSTONED, 0),
            duplicates=staged.duplicates,
        )

    def tombstone(self, portal: str, table: TableSchema | str, ids: Iterable[int], reason: str,
                  deleted_at: datetime | None = None) -> int:
        self._check_open()
        name = self.warehouse._require_table(table)
        id_list = sorted({int(i) for i in ids})
        if not id_list:
            return 0
        params = {"portal": portal, "ids": id_list, "reason": reason,
                  "deleted_at": _now() if deleted_at is None else _aware(deleted_at)}
        d = self.warehouse.dialect
        self.warehouse._execute(versioning.close_deleted_versions(d, name), params)
        return self.warehouse._execute(versioning.tombstone(d, name), params)

    def mark_loaded(self, portal: str, process_ids: Iterable[str]) -> int:
        self._check_open()
        return self.warehouse._transition(journal.mark_loaded(self.warehouse.dialect), portal, process_ids)

    def park(self, portal: str, failures: Iterable[FailedMessage]) -> int:
        self._check_open()
        unique = list({failure.message_id: failure for failure in failures}.values())
        if not unique:
            return 0
        self.warehouse._execute(journal.park(self.warehouse.dialect), {
            "portal": portal, "now": _now(),
            "message_ids": [f.message_id for f in unique], "event_names": [f.event_name for f in unique],
            "kinds": [f.entity_kind for f in unique], "entity_ids": [f.entity_id for f in unique],
            "errors": [f.error[:2000] for f in unique],
            "event_ats": [datetime.fromisoformat(f.event_at) if f.event_at else None for f in unique]})
        return len(unique)

    def resolve_parked(self, portal: str, message_ids: Iterable[str]) -> int:
        self._check_open()
        ids = list(dict.fromkeys(message_ids))
        if not ids:
            return 0
        return self.warehouse._execute(journal.resolve_parked(self.warehouse.dialect),
                                       {"portal": portal, "message_ids": ids, "now": _now()})

    def record_pushes(self, portal: str, entries: Iterable[PushEntry]) -> int:
        self._check_open()
        return self.warehouse._record_pushes(portal, entries)


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise WarehouseError(f"naive datetime {moment.isoformat()}: pass a timezone-aware time")
    return moment
