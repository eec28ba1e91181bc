"""DuckDB, the embedded default: one file, one writer, and a published snapshot for analysts.

Rows are staged by registering Arrow tables with the connection (no copy, no row-by-row inserts).
DuckDB has no data-modifying CTEs, so an upsert first classifies the staged rows against the stored
ones in one join, then writes new rows with a plain INSERT (the cheap path a bootstrap takes) and
changed or revived rows with a plain UPDATE (`versioning.update_rows`), each with set-based history
statements. Only this process writes the file, so the classification cannot go stale before the
writes, and the rule `versioning.guard` enforces on PostgreSQL needs no second check here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from connectors.warehouse import journal, versioning
from connectors.warehouse.errors import SnapshotError, TransactionStateError, WarehouseError
from connectors.warehouse.frames import StagedRows
from connectors.warehouse.layout import DUCKDB, TableNames
from connectors.warehouse.snapshot import SnapshotPublisher
from connectors.warehouse.sql_warehouse import SqlWarehouse

log = logging.getLogger(__name__)

_STAGED, _NEW, _CHANGED = "_wh_staged", "_wh_new", "_wh_changed"

# Every checkpoint rewrites the table's last, partly filled row group (up to 122,880 rows), so with
# DuckDB's default 16 MB WAL threshold a stream of small commits checkpoints every few batches and
# rewrites the same rows again and again: with 400,000 deal rows in chunks of 2,500 that took 2-3x
# the time and left a 2-3x larger file than a 256 MB threshold. The larger WAL costs a few seconds of
# replay after a crash. ``preserve_insertion_order`` off lets DuckDB stream inserts and updates
# without buffering them to keep their order (no statement here depends on it). One thread: the
# writer's statements each touch one 2,500-row chunk, where DuckDB's task scheduling across threads
# cost more than it gained (commit of 100,000 deals: 3.3 CPU-s with one thread, 4.0 with two).
SETTINGS = {"TimeZone": "UTC", "checkpoint_threshold": "256MB", "preserve_insertion_order": "false",
            "threads": "1"}

# DuckDB's buffer pool grows to 80% of the machine's RAM by default: a run holding a million-row table
# kept its blocks cached and peaked at 1.3 GB. With a limit, blocks beyond it are evicted (table data
# is re-read from the file, uncommitted or unchecked rows spill to the temp directory). 64 MB was too
# little: draining a million changes into a million-row table failed in an UPDATE, which asked for
# 16 MB while DuckDB held 47 MB of its 61 MB that it could not evict. 80 MB leaves room for that and
# keeps a run under its 400 MB budget (benchmarks/memory.py, a million deals: full load 382 MB,
# a million changes 387 MB; 400 and 401 with 96 MB), with changes arriving in rounds of 25,000
# (connectors.sync.steps.run_rounds) and the pool emptied after each commit (`release_memory`).
DEFAULT_MEMORY_LIMIT_MB = 80

# What `DuckDBWarehouse.release_memory` lowers the limit to for a moment, above what cannot be evicted.
_RELEASED_LIMIT_MB = 8

# What DuckDB cannot spill: the versions an UPDATE wrote to rows already in the file stay in memory
# (DuckDB's ``ALLOCATOR`` tag in ``duckdb_memory()``) until the next checkpoint, ~5 MB per 2,500
# changed deals. Past this share of the limit (a quarter) a commit is followed by a checkpoint, so a
# run draining a million changes does not reach the limit (which fails the statement) while a full
# load, which only appends (spillable), still checkpoints by the WAL threshold above.
_UNSPILLABLE_SHARE = 0.25


class DuckDBWarehouse(SqlWarehouse):
    """A DuckDB file. ``publish_every``: None = publish only on request, 0 = after every commit,
    N = after a commit at most every N seconds. ``memory_limit_mb``: DuckDB's buffer pool (MB); what
    does not fit spills to ``<file>.tmp`` beside the database (DuckDB's default temp directory, made
    owner-only here: it holds the same CRM data as the file). Not thread-safe: one instance per thread."""

    def __init__(self, path: str | Path, *, snapshot_path: str | Path | None = None,
                 publish_every: float | None = None,
                 memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB) -> None:
        super().__init__(DUCKDB)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        target = Path(snapshot_path) if snapshot_path else self.path.with_name(
            f"{self.path.stem}.snapshot{self.path.suffix or '.duckdb'}")
        self.snapshot = SnapshotPublisher(self.path, target, publish_every)
        try:
            self._con = duckdb.connect(str(self.path))
        except duckdb.IOException as error:
            raise WarehouseError(f"cannot open {self.path} for writing (another process holds it?): "
                                 f"{error}") from None
        for name, value in SETTINGS.items():
            self._execute(f"SET {name} = '{value}'")
        self.spill_directory = self.path.with_name(f"{self.path.name}.tmp")
        self.spill_directory.mkdir(mode=0o700, exist_ok=True)
        self._execute(f"SET temp_directory = '{_literal(str(self.spill_directory))}'")
        self._memory_limit_mb = int(memory_limit_mb)
        self._execute(f"SET memory_limit = '{self._memory_limit_mb}MB'")
        self._unspillable_budget = int(memory_limit_mb * _UNSPILLABLE_SHARE) * 1024 * 1024
        with self._atomic():
            for statement in journal.create_statements(DUCKDB):
                self._execute(statement)

    def __repr__(self) -> str:
        return f"DuckDBWarehouse({str(self.path)!r})"

    def close(self) -> None:
        self._con.close()

    def release_memory(self) -> None:
        """Evict the buffer pool's cached blocks, so the next step (a fetch, which never reads the
        table) does not stack its own peak on top of them. DuckDB evicts down to a new
        ``memory_limit`` when it is lowered; it is then set back. What it cannot evict (an UPDATE's
        versions until the next checkpoint, see `_UNSPILLABLE_SHARE`) stays, and the lower limit
        leaves room for it. Best effort: if DuckDB still cannot fit, nothing is released.
        Measured (`benchmarks/memory.py`, 100,000 changes drained in rounds): each later round's fetch
        peaked ~30 MB lower."""
        if self._in_transaction:
            raise TransactionStateError("memory is released between transactions, not inside one")
        floor_mb = _RELEASED_LIMIT_MB + -(-self._unspillable() // 2**20)  # ceil
        try:
            if floor_mb < self._memory_limit_mb:
                self._execute(f"SET memory_limit = '{floor_mb}MB'")
        except duckdb.OutOfMemoryException as error:
            log.debug("DuckDB kept its cached blocks: %s", error)
        finally:
            self._execute(f"SET memory_limit = '{self._memory_limit_mb}MB'")

    def checkpoint(self) -> None:
        """Fold the WAL into the database file now (publishing a snapshot does this too)."""
        if self._in_transaction:
            raise TransactionStateError("checkpoint runs between transactions, not inside one")
        self._execute("CHECKPOINT")

    # -- primitives -----------------------------------------------------------------------------

    def _execute(self, sql: str, params: Mapping[str, object] | None = None) -> int:
        # Data changes answer one row with the count; DDL answers no rows.
        rows = self._run(sql, params).fetchall()
        return int(rows[0][0]) if rows else 0

    def _query(self, sql: str, params: Mapping[str, object] | None = None) -> list[tuple]:
        return self._run(sql, params).fetchall()

    def _query_frame(self, sql: str, params: Mapping[str, object]) -> pd.DataFrame:
        return self._run(sql, params).df()

    def _run(self, sql: str, params: Mapping[str, object] | None) -> duckdb.DuckDBPyConnection:
        if params is None:  # DDL: literal text (a column comment may hold a '%')
            return self._con.execute(sql)
        translated, names = _translate(sql)
        return self._con.execute(translated, {name: params[name] for name in names})

    def _stored_columns(self, table: str) -> dict[str, str] | None:
        rows = self._query(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_catalog = current_database() AND table_schema = 'main' "
            "AND table_name = %(table)s ORDER BY ordinal_position", {"table": table})
        return dict(rows) if rows else None

    def _table_names(self) -> set[str]:
        return {row[0] for row in self._query(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database() "
            "AND table_schema = 'main' AND table_type = 'BASE TABLE'", {})}

    @contextmanager
    def _atomic(self) -> Iterator[None]:
        self._con.begin()
        try:
            yield
        except BaseException:
            self._con.rollback()
            raise
        self._con.commit()
        if self._unspillable() > self._unspillable_budget:
            self._execute("CHECKPOINT")

    def _unspillable(self) -> int:
        """Bytes DuckDB holds outside its buffer pool's eviction (see `_UNSPILLABLE_SHARE`)."""
        return int(self._con.execute("SELECT COALESCE(sum(memory_usage_bytes), 0) FROM duckdb_memory() "
                                     "WHERE tag = 'ALLOCATOR'").fetchone()[0])

    # -- upsert ---------------------------------------------------------------------------------

    def _write_rows(self, portal: str, table: str, staged: StagedRows,
                    null_columns: frozenset[str], overwrite: bool) -> dict[str, int]:
        rows = staged.table
        self._con.register(_STAGED, rows.append_column("_row", pa.array(np.arange(rows.num_rows))))
        try:
            classified = self._run(_classify(table, overwrite), {"portal": portal}).fetchnumpy()
        finally:
            self._con.unregister(_STAGED)
        hashes = pa.array(classified["_content_hash"], pa.uint64())
        actions = pa.array(classified["_action"], pa.string())
        versions = rows.append_column("_content_hash", hashes)
        columns, nulls = staged.columns, sorted(null_columns)
        params = {"portal": portal}

        new = versions.filter(pc.equal(actions, versioning.INSERT))
        if new.num_rows:
            with self._registered(_NEW, new):
                self._execute(versioning.upsert(DUCKDB, table, columns, nulls, f"{_NEW} AS s",
                                                on_conflict=False), params)
                self._execute(versioning.add_versions(DUCKDB, table, columns, f"{_NEW} AS s"), params)
        changed = versions.filter(pc.is_in(actions, pa.array([versioning.UPDATE, versioning.REVIVE])))
        if changed.num_rows:
            with self._registered(_CHANGED, changed):
                self._execute(versioning.close_versions(DUCKDB, table, f"{_CHANGED} AS s",
                                                        overwrite=overwrite), params)
                self._execute(versioning.update_rows(DUCKDB, table, columns, nulls, f"{_CHANGED} AS s"),
                              params)
                self._execute(versioning.add_versions(DUCKDB, table, columns, f"{_CHANGED} AS s",
                                                      overwrite=overwrite), params)
        counts = pc.value_counts(actions)
        return {str(item["values"]): int(item["counts"]) for item in counts.to_pylist()}

    @contextmanager
    def _registered(self, name: str, table: pa.Table) -> Iterator[None]:
        self._con.register(name, table)
        try:
            yield
        finally:
            self._con.unregister(name)

    # -- snapshot -------------------------------------------------------------------------------

    def publish_snapshot(self) -> Path:
        if self._in_transaction:
            raise TransactionStateError("publish_snapshot runs between transactions, not inside one")
        return self.snapshot.publish(self.checkpoint)

    def _after_commit(self) -> None:
        if not self.snapshot.due():
            return
        try:
            self.snapshot.publish(self.checkpoint)
        except (OSError, duckdb.Error, SnapshotError) as error:
            # The data is committed; a failed publication leaves the previous snapshot in place
            # and is retried after the next commit.
            log.warning("snapshot %s not published: %s", self.snapshot.target, error)


def _literal(text: str) -> str:
    return text.replace("'", "''")


@lru_cache(maxsize=256)
def _translate(sql: str) -> tuple[str, tuple[str, ...]]:
    """psycopg's parameter style (``%(name)s``, ``%%``) -> DuckDB's (``$name``, ``%``); returns the
    names used, since DuckDB refuses parameters a statement does not use."""
    names: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(1):
            names.append(match.group(1))
            return "$" + match.group(1)
        if match.group(0) == "%%":
            return "%"
        raise WarehouseError("a lone '%' in SQL: write '%%' for a literal percent sign")

    translated = re.sub(r"%\((\w+)\)s|%%|%", replace, sql)
    return translated, tuple(dict.fromkeys(names))


@lru_cache(maxsize=64)
def _classify(table: str, overwrite: bool) -> str:
    main = DUCKDB.qualified(TableNames.of(table).table)
    return (f"SELECT s._content_hash, {versioning.action('s', 't', overwrite=overwrite)} AS _action "
            f"FROM (SELECT *, hash(_raw) AS _content_hash FROM {_STAGED}) AS s "
            f"LEFT JOIN {main} AS t ON t.portal = %(portal)s::text AND t.id = s.id ORDER BY s._row")

