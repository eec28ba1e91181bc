"""PostgreSQL as the state store, for deployments where processes run on several machines.

Each call opens its own connection: the store is used by short-lived calls from several processes,
and a connection shared across a fork would be unusable in the child.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime

import psycopg
from psycopg.conninfo import conninfo_to_dict

from connectors.state.errors import LockTimeout
from connectors.state.portal import check_portal_key
from connectors.state.sql_store import Run, SqlStateStore
from connectors.tables import check_identifier

DEFAULT_SCHEMA = "bitrix24_state"


class PostgresStateStore(SqlStateStore):
    def __init__(self, dsn: str, *, schema: str = DEFAULT_SCHEMA) -> None:
        self.schema = check_identifier(schema)
        self._dsn = dsn
        info = conninfo_to_dict(dsn)
        self._where = f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
        with self._session(write=True) as run:
            # Several processes may open a fresh store at once; IF NOT EXISTS still races.
            run("SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 0))",
                {"key": f"connectors.state ddl {schema}"})
            run(f'CREATE SCHEMA IF NOT EXISTS "{schema}"', None)
            for statement in self._schema_statements("timestamptz"):
                run(statement, None)

    def __repr__(self) -> str:
        return f"PostgresStateStore({self._where!r}, schema={self.schema!r})"

    @contextmanager
    def _session(self, *, write: bool) -> Iterator[Run]:
        with psycopg.connect(self._dsn, autocommit=True) as connection, connection.transaction():

            def run(sql: str, params: Mapping[str, object] | None) -> list[tuple]:
                cursor = connection.execute(sql, params)
                return cursor.fetchall() if cursor.description else []

            yield run

    def _serialize_signals(self, run: Run) -> None:
        # READ COMMITTED writers could otherwise commit sequence numbers out of order, and a reader
        # whose cursor passed N would never see an N-1 committed after it.
        run("SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 0))",
            {"key": f"connectors.state signals {self.schema}"})

    def close(self) -> None:
        """Nothing stays open between calls: each opens and closes its own connection."""

    def _table(self, name: str) -> str:
        return f'"{self.schema}"."{name}"'

    def _encode_time(self, moment: datetime) -> object:
        return moment

    def _decode_time(self, value: object) -> datetime:
        return value.astimezone(UTC)  # type: ignore[attr-defined]

    @contextmanager
    def refresh_lock(self, portal: str, timeout: float = 60.0) -> Iterator[None]:
        key = f"connectors.state refresh {self.schema} {check_portal_key(portal)}"
        with psycopg.connect(self._dsn, autocommit=True) as connection:
            connection.execute(f"SET lock_timeout = '{max(1, int(timeout * 1000))}ms'")
            try:
                connection.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [key])
            except psycopg.errors.LockNotAvailable:
                raise LockTimeout(f"refresh lock of {portal} still held after {timeout:g} s") from None
            try:
                yield
            finally:
                connection.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [key])
