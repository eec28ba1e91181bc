"""PostgreSQL (psycopg 3): entity tables in a configurable schema, loaded with COPY.

An upsert streams the staged Arrow table as CSV (written by Arrow's C++ writer) with
``COPY ... FROM STDIN`` into a temporary table shaped like the entity table, then applies it with
one statement whose data-modifying CTEs classify, upsert, close old history rows and append new
ones. Several processes may write at once (one run per portal), so the ``ON CONFLICT ... WHERE``
guard, evaluated against the latest committed row, is what keeps an older state out.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import psycopg
import pyarrow.csv as csv
from psycopg.conninfo import conninfo_to_dict

from connectors.tables import ColumnType, TableSchema, check_identifier
from connectors.warehouse import DEFAULT_SCHEMA, journal, versioning
from connectors.warehouse.errors import WarehouseBusy
from connectors.warehouse.frames import StagedRows, without_nul
from connectors.warehouse.layout import TableNames, postgres_dialect, quote
from connectors.warehouse.sql_warehouse import SqlWarehouse

log = logging.getLogger(__name__)


class PostgresWarehouse(SqlWarehouse):
    """Tables live in ``schema`` (default ``bitrix24``); the DSN may carry a password, never shown."""

    def __init__(self, dsn: str, *, schema: str = DEFAULT_SCHEMA) -> None:
        super().__init__(postgres_dialect(schema))
        self.schema = schema
        info = conninfo_to_dict(dsn)
        self._where = f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
        self._conn = psycopg.connect(dsn, autocommit=True)
        # Staging table per entity table -> the column signature it was created with.
        self._stages: dict[str, tuple[tuple[str, str], ...]] = {}
        with self._atomic():
            self._lock_ddl()
            self._execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
            for statement in journal.create_statements(self.dialect):
                self._execute(statement)

    def __repr__(self) -> str:
        return f"PostgresWarehouse({self._where!r}, schema={self.schema!r})"

    def close(self) -> None:
        self._conn.close()

    def publish_snapshot(self) -> Path | None:
        return None  # analysts read PostgreSQL directly; MVCC keeps their reads consistent

    # -- primitives -----------------------------------------------------------------------------

    def _execute(self, sql: str, params: Mapping[str, object] | None = None) -> int:
        with self._conn.cursor() as cursor:
            cursor.execute(sql, params)
            return max(cursor.rowcount, 0)

    def _query(self, sql: str, params: Mapping[str, object] | None = None) -> list[tuple]:
        with self._conn.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()

    def _query_frame(self, sql: str, params: Mapping[str, object]) -> pd.DataFrame:
        with self._conn.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            names = [column.name for column in cursor.description or ()]
        return pd.DataFrame(rows, columns=names)

    def _stored_columns(self, table: str) -> dict[str, str] | None:
        rows = self._query(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute AS a "
            "WHERE a.attrelid = to_regclass(%(relation)s) AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum", {"relation": self.dialect.qualified(table)})
        return dict(rows) if rows else None

    def _table_names(self) -> set[str]:
        return {row[0] for row in self._query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %(schema)s "
            "AND table_type = 'BASE TABLE'", {"schema": self.schema})}

    @contextmanager
    def _atomic(self) -> Iterator[None]:
        with self._conn.transaction():
            yield

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """A session advisory lock on this warehouse's connection: held across processes and
        machines, and released by PostgreSQL if the holder's connection dies."""
        key = {"key": f"connectors.warehouse exclusive {self.schema} {name}"}
        [(taken,)] = self._query("SELECT pg_try_advisory_lock(hashtextextended(%(key)s, 0))", key)
        if not taken:
            raise WarehouseBusy(f"{name!r} is held by another run")
        try:
            yield
        finally:
            self._query("SELECT pg_advisory_unlock(hashtextextended(%(key)s, 0))", key)

    def limit_lock_wait(self, seconds: float) -> None:
        self._execute(f"SET LOCAL lock_timeout = {int(seconds * 1000)}")

    def _lock_ddl(self) -> None:
        # Two runs (different portals) may meet a new table or user field at the same moment;
        # CREATE/ALTER ... IF NOT EXISTS still races in the catalog, so DDL takes a lock per schema.
        self._execute("SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 0))",
                      {"key": f"connectors.warehouse ddl {self.schema}"})

    def _drop_dependent_views(self, names: TableNames) -> list[str]:
        # PostgreSQL refuses ALTER COLUMN ... TYPE on a column a view reads ("cannot alter type of a
        # column used by a view or rule"). The analysts' schema is rebuilt in the same transaction
        # (`_rebuild_analytics_after_migration`); any other view (an analyst's own) is left to its
        # owner: a retyped column is rare (a type change of the portal or of the mapping).
        rows = self._query(
            "SELECT DISTINCT v.oid::regclass::text FROM pg_depend AS d "
            "JOIN pg_rewrite AS r ON r.oid = d.objid JOIN pg_class AS v ON v.oid = r.ev_class "
            "WHERE d.refobjid IN (to_regclass(%(table)s), to_regclass(%(history)s), to_regclass(%(current)s)) "
            "AND v.oid <> d.refobjid AND v.oid IS DISTINCT FROM to_regclass(%(current)s)",
            {"table": self.dialect.qualified(names.table), "history": self.dialect.qualified(names.history),
             "current": self.dialect.qualified(names.current)})
        if rows:
            log.warning("%s: dropping views that read columns being retyped: %s; the analysts' schema is "
                        "rebuilt now, any other view must be created again by its owner",
                        names.table, [row[0] for row in rows])
        return [f"DROP VIEW IF EXISTS {row[0]} CASCADE" for row in rows]

    def _create_extras(self, table: str) -> list[str]:
        names = TableNames.of(table)
        index = check_identifier(f"{table}_hopen")
        return [f"CREATE INDEX IF NOT EXISTS {quote(index)} ON {self.dialect.qualified(names.history)} "
                f"(portal, id) WHERE _valid_to IS NULL"]

    def _forget_transaction_state(self) -> None:
        self._stages.clear()

    # -- upsert ---------------------------------------------------------------------------------

    def _write_rows(self, portal: str, table: str, staged: StagedRows,
                    null_columns: frozenset[str], overwrite: bool) -> dict[str, int]:
        stage = self._stage_table(table, staged)
        self._execute(f"TRUNCATE {stage}")
        schema = self._known[table].schema
        json_columns = {"_raw", *(name for name in staged.columns if _type_of(schema, name) is ColumnType.JSON)}
        buffer = io.BytesIO()
        csv.write_csv(without_nul(staged.table, json_columns), buffer, csv.WriteOptions(include_header=False))
        column_list = ", ".join(quote(name) for name in staged.table.column_names)
        with self._conn.cursor() as cursor, \
                cursor.copy(f"COPY {stage} ({column_list}) FROM STDIN (FORMAT csv)") as copy:
            copy.write(buffer.getbuffer())
        rows = self._query(self._apply_statement(table, stage, staged.columns, sorted(null_columns), overwrite),
                           {"portal": portal})
        return {action: int(count) for action, count in rows}

    def _stage_table(self, table: str, staged: StagedRows) -> str:
        schema = self._known[table].schema
        signature = (("id", "bigint"), ("_source_modified_at", "timestamptz"), ("_raw", "text"),
                     *((name, self.dialect.types[_type_of(schema, name)]) for name in staged.columns))
        stage = f"pg_temp.{quote(check_identifier('_stage_' + table))}"
        if self._stages.get(table) != signature:
            columns = ", ".join(f"{quote(name)} {kind}" for name, kind in signature)
            self._execute(f"DROP TABLE IF EXISTS {stage}")
            self._execute(f"CREATE TEMP TABLE {stage} ({columns})")
            self._stages[table] = signature
        return stage

    def _apply_statement(self, table: str, stage: str, columns: tuple[str, ...],
                         null_columns: list[str], overwrite: bool) -> str:
        # Lookups of stored rows are LATERAL subqueries with LIMIT 1 (at most one row matches): the
        # planner must probe the primary key / open-version index once per staged row, with a plain
        # index scan. A join it may plan freely turns into a scan of the whole table per chunk (or
        # worse, a nested loop over a CTE) whenever the statistics lag behind a fast-growing table,
        # which is exactly what a bootstrap produces; without the LIMIT it picked bitmap scans at
        # ~0.6 ms per probe (1.5 s per chunk at a million rows instead of 14 ms).
        d = self.dialect
        names = TableNames.of(table)
        main, history = d.qualified(names.table), d.qualified(names.history)
        applied = "(" + ", ".join(f"'{name}'" for name in versioning.APPLIED) + ")"
        upsert = versioning.upsert(d, table, columns, null_columns,
                                   f"(SELECT * FROM classified WHERE _action IN {applied}) AS s",
                                   overwrite=overwrite)
        returned = ", ".join(["t.id", *(f"t.{quote(c)}" for c in columns), "t._source_modified_at",
                              "t._content_hash"])
        return f"""WITH incoming AS (
                SELECT *, hashtextextended(_raw, 0) AS _content_hash FROM {stage}
            ), classified AS (
                SELECT s.*, {versioning.action('s', 't', overwrite=overwrite)} AS _action
                FROM incoming AS s LEFT JOIN LATERAL (
                    SELECT id, _deleted_at, _source_modified_at, _content_hash FROM {main}
                    WHERE portal = %(portal)s::text AND id = s.id LIMIT 1) AS t ON TRUE
            ), replaced_versions AS (
                SELECT o.row_ref, {versioning.version_start(overwrite, "c")} AS valid_to
                FROM classified AS c CROSS JOIN LATERAL (
                    SELECT ctid AS row_ref FROM {history}
                    WHERE portal = %(portal)s::text AND id = c.id AND _valid_to IS NULL LIMIT 1) AS o
                WHERE c._action = '{versioning.UPDATE}'
            ), written AS (
                {upsert} RETURNING {returned}
            ), closed AS (
                UPDATE {history} AS h SET _valid_to = r.valid_to
                FROM replaced_versions AS r WHERE h.ctid = r.row_ref
            ), versions AS (
                {versioning.add_versions(d, table, columns, "written AS s", overwrite=overwrite)}
            )
            SELECT _action, count(*) FROM classified GROUP BY _action"""


def _type_of(schema: TableSchema, column: str) -> ColumnType:
    return schema.column(column).type
