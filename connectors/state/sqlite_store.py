"""SQLite, the default state store: one file, WAL mode, created readable by its owner only.

Each call opens its own connection (cheap for a local file, safe across threads and forks); writes
run in ``BEGIN IMMEDIATE`` transactions, which take the write lock up front, so concurrent writers
wait their turn (busy timeout) instead of failing on a lock upgrade.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from connectors.state.locks import PortalLocks
from connectors.state.portal import check_portal_key
from connectors.state.sql_store import Run, SqlStateStore

_BUSY_TIMEOUT_SECONDS = 30.0


class SQLiteStateStore(SqlStateStore):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The file holds tokens and application tokens: create it 0600 before SQLite opens it;
        # SQLite gives its -wal and -shm files the database file's permissions.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        self._locks = PortalLocks(self.path.with_name(self.path.name + ".locks"))
        connection = self._connect()
        try:
            connection.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the file
        finally:
            connection.close()
        with self._session(write=True) as run:
            for statement in self._schema_statements("REAL"):
                run(statement, None)

    def __repr__(self) -> str:
        return f"SQLiteStateStore({str(self.path)!r})"

    def _connect(self, *, durable: bool = True) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_SECONDS, isolation_level=None)
        # A saved token must survive a power cut: Bitrix24 may already have invalidated the old one.
        # A request bucket need not (a lost update after a power cut is a few requests' worth that
        # drained long ago), and it is written once per request: no fsync for it.
        connection.execute("PRAGMA synchronous = FULL" if durable else "PRAGMA synchronous = NORMAL")
        return connection

    def _bucket_session(self) -> AbstractContextManager[Run]:
        return self._session(write=True, durable=False)

    @contextmanager
    def _session(self, *, write: bool, durable: bool = True) -> Iterator[Run]:
        connection = self._connect(durable=durable)
        try:
            connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")

            def run(sql: str, params: Mapping[str, object] | None) -> list[tuple]:
                return connection.execute(_translate(sql), dict(params or {})).fetchall()

            yield run
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        finally:
            connection.close()

    def close(self) -> None:
        """Nothing stays open between calls: each opens and closes its own connection."""

    def _table(self, name: str) -> str:
        return name

    def _encode_time(self, moment: datetime) -> object:
        return moment.timestamp()

    def _decode_time(self, value: object) -> datetime:
        return datetime.fromtimestamp(float(value), UTC)  # type: ignore[arg-type]

    def refresh_lock(self, portal: str, timeout: float = 60.0) -> AbstractContextManager[None]:
        return self._locks.hold(check_portal_key(portal), timeout)


@lru_cache(maxsize=64)
def _translate(sql: str) -> str:
    """``%(name)s`` -> SQLite's ``:name``."""
    return re.sub(r"%\((\w+)\)s", r":\1", sql)
