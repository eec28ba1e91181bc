"""PostgreSQL as the state store, for deployments where processes run on several machines.

Calls reuse a few idle connections of this process (`close` closes them): a sync run makes about
twenty calls per portal (claims, tokens, the look-up cache, the request bucket once per Bitrix24
request), and a connection each cost a PostgreSQL backend start each, which at a thousand portals was
a large share of the machine (benchmarks/scale.py). Connections are kept per process: a connection
shared across a fork would be unusable in the child.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime

import psycopg
from psycopg.conninfo import conninfo_to_dict

from connectors.state import DEFAULT_SCHEMA
from connectors.state.errors import LockTimeout
from connectors.state.portal import check_portal_key
from connectors.state.sql_store import Run, SqlStateStore
from connectors.tables import check_identifier

_MAX_IDLE_CONNECTIONS = 4


class PostgresStateStore(SqlStateStore):
    # The server's clock: every machine of a deployment reads the same one.
    _bucket_clock = "EXTRACT(EPOCH FROM clock_timestamp())::float8"
    _greatest = "GREATEST"

    def __init__(self, dsn: str, *, schema: str = DEFAULT_SCHEMA) -> None:
        self.schema = check_identifier(schema)
        self._dsn = dsn
        # Idle connections for the next calls, kept per process (a forked child must not share its
        # parent's sockets).
        self._idle: list[psycopg.Connection] = []
        self._idle_lock = threading.Lock()
        self._idle_pid = os.getpid()
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
        """One transaction on an idle connection of this process (or a new one)."""
        with self._connection() as connection, connection.transaction():
            yield _runner(connection)

    @contextmanager
    def _bucket_session(self) -> Iterator[Run]:
        """Statements in autocommit (one statement, one transaction), as the request bucket needs."""
        with self._connection() as connection:
            yield _runner(connection)

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """An idle connection of this process, checked, or a fresh one; back to the idle ones after a
        clean exit, closed after an error (its state is unknown)."""
        with self._idle_lock:
            if self._idle_pid != os.getpid():
                self._idle, self._idle_pid = [], os.getpid()
            connection = self._idle.pop() if self._idle else None
        if connection is not None and (connection.closed or not self._usable(connection)):
            connection.close()
            connection = None
        if connection is None:
            connection = psycopg.connect(self._dsn, autocommit=True)
        try:
            yield connection
        except BaseException:
            connection.close()
            raise
        with self._idle_lock:
            if self._idle_pid == os.getpid() and len(self._idle) < _MAX_IDLE_CONNECTIONS and not connection.closed:
                self._idle.append(connection)
                return
        connection.close()

    @staticmethod
    def _usable(connection: psycopg.Connection) -> bool:
        """Whether an idle connection still answers: the server may have dropped it (a restart, an
        idle timeout). One round trip, far cheaper than the connection it saves."""
        try:
            connection.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def _serialize_signals(self, run: Run) -> None:
        # READ COMMITTED writers could otherwise commit sequence numbers out of order, and a reader
        # whose cursor passed N would never see an N-1 committed after it.
        run("SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 0))",
            {"key": f"connectors.state signals {self.schema}"})

    def close(self) -> None:
        """Close this process's idle connections."""
        with self._idle_lock:
            idle, self._idle = (self._idle, []) if self._idle_pid == os.getpid() else ([], [])
        for connection in idle:
            connection.close()

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


def _runner(connection: psycopg.Connection) -> Run:
    """A `Run` executing on ``connection``: the rows of a statement that returns some, else []."""

    def run(sql: str, params: Mapping[str, object] | None) -> list[tuple]:
        cursor = connection.execute(sql, params)
        return cursor.fetchall() if cursor.description else []

    return run
