"""The state store: portals, OAuth tokens and push signals (SQLite by default, PostgreSQL option).

``open_state_store("state.sqlite3")`` or ``open_state_store("postgresql://...")`` returns a
`StateStore`; ``store.tokens`` is the ``TokenStore`` the source side's OAuth session takes.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from connectors.state.errors import InvalidPortalKey, LockTimeout, StateStoreError, UnsupportedStateStore
from connectors.state.interface import PortalTokens, StateStore
from connectors.state.portal import Portal, PortalProgress, PortalStatus, SensorPortalState, check_portal_key
from connectors.state.sqlite_store import SQLiteStateStore

if TYPE_CHECKING:
    from connectors.state.postgres_store import PostgresStateStore

__all__ = [
    "InvalidPortalKey",
    "LockTimeout",
    "Portal",
    "PortalProgress",
    "PortalStatus",
    "PortalTokens",
    "PostgresStateStore",
    "SQLiteStateStore",
    "SensorPortalState",
    "StateStore",
    "StateStoreError",
    "UnsupportedStateStore",
    "check_portal_key",
    "open_state_store",
]

# The PostgreSQL schema the state store's tables live in unless told otherwise.
DEFAULT_SCHEMA = "bitrix24_state"

_SQLITE_URL = "sqlite:///"
_POSTGRES_URLS = ("postgresql://", "postgres://")


def open_state_store(target: str | os.PathLike[str], *, schema: str = DEFAULT_SCHEMA) -> StateStore:
    """A SQLite file path (or ``sqlite:///path``), or a PostgreSQL DSN with ``schema``."""
    text = os.fspath(target)
    if text.startswith(_POSTGRES_URLS):
        from connectors.state.postgres_store import PostgresStateStore
        return PostgresStateStore(text, schema=schema)
    if text.startswith(_SQLITE_URL):
        text = "/" + text.removeprefix(_SQLITE_URL)  # sqlite:///var/lib/s.sqlite3 -> /var/lib/s.sqlite3
    elif "://" in text:
        # Only the scheme is echoed: the rest of a URL may hold a password.
        raise UnsupportedStateStore(f"unsupported state store URL scheme: {text.split('://', 1)[0]!r}")
    return SQLiteStateStore(text)


def __getattr__(name: str) -> object:
    # The PostgreSQL store is imported when first asked for: psycopg adds ~13 MB to every process,
    # and a run on the embedded default (SQLite + DuckDB) never needs it (benchmarks/memory.py).
    if name == "PostgresStateStore":
        from connectors.state.postgres_store import PostgresStateStore
        return PostgresStateStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
