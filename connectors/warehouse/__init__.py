"""Destinations: DuckDB (embedded default) and PostgreSQL behind one small interface.

``open_warehouse("warehouse.duckdb")`` or ``open_warehouse("postgresql://...", schema="bitrix24")``
returns a `Warehouse`; see `interface` for the calls the CDC loop makes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from connectors.warehouse.duckdb_warehouse import DuckDBWarehouse
from connectors.warehouse.errors import (
    FrameContractError,
    JournalError,
    SnapshotError,
    TableNotFound,
    TransactionStateError,
    UnknownProcessIds,
    UnsupportedWarehouse,
    WarehouseBusy,
    WarehouseError,
)
from connectors.warehouse.evolution import SchemaChanges, TypeConflict
from connectors.warehouse.frames import Rows
from connectors.warehouse.interface import Transaction, UpsertCounts, Warehouse
from connectors.warehouse.journal import (
    ErrorLaneEntry,
    FailedMessage,
    JournalEntry,
    JournalStatus,
    ParkedStatus,
    SyncRun,
)
from connectors.warehouse.writeback_ledger import PushEntry, PushStatus

if TYPE_CHECKING:
    from connectors.warehouse.postgres_warehouse import PostgresWarehouse

__all__ = [
    "DuckDBWarehouse",
    "ErrorLaneEntry",
    "FailedMessage",
    "FrameContractError",
    "JournalEntry",
    "JournalError",
    "JournalStatus",
    "ParkedStatus",
    "PostgresWarehouse",
    "PushEntry",
    "PushStatus",
    "Rows",
    "SchemaChanges",
    "SnapshotError",
    "SyncRun",
    "TableNotFound",
    "Transaction",
    "TransactionStateError",
    "TypeConflict",
    "UnknownProcessIds",
    "UnsupportedWarehouse",
    "UpsertCounts",
    "Warehouse",
    "WarehouseBusy",
    "WarehouseError",
    "open_warehouse",
]

# The PostgreSQL schema the warehouse's tables live in unless told otherwise.
DEFAULT_SCHEMA = "bitrix24"

_DUCKDB_URL = "duckdb:///"
_POSTGRES_URLS = ("postgresql://", "postgres://")


def open_warehouse(target: str | os.PathLike[str], *, schema: str = DEFAULT_SCHEMA,
                   snapshot_path: str | os.PathLike[str] | None = None,
                   publish_every: float | None = None) -> Warehouse:
    """Open a warehouse by target: a DuckDB file path (or ``duckdb:///path``) or a PostgreSQL URL.

    ``schema`` applies to PostgreSQL; a ``schema`` query parameter of the URL
    (``postgresql://host/db?schema=crm``) takes precedence, so one setting can name the whole place.
    ``snapshot_path`` (default ``<name>.snapshot.duckdb`` beside the file) and ``publish_every`` (None:
    on request only; 0: after every commit; N: at most every N seconds) apply to DuckDB.
    Raises `UnsupportedWarehouse` for any other URL scheme.
    """
    text = os.fspath(target)
    if text.startswith(_POSTGRES_URLS):
        from connectors.warehouse.postgres_warehouse import PostgresWarehouse
        dsn, url_schema = _without_schema_parameter(text)
        return PostgresWarehouse(dsn, schema=url_schema or schema)
    if text.startswith(_DUCKDB_URL):
        text = "/" + text.removeprefix(_DUCKDB_URL)  # duckdb:///var/lib/w.duckdb -> /var/lib/w.duckdb
    elif "://" in text:
        # Only the scheme is echoed: the rest of a URL may hold a password.
        raise UnsupportedWarehouse(f"unsupported warehouse URL scheme: {text.split('://', 1)[0]!r}")
    return DuckDBWarehouse(Path(text), snapshot_path=snapshot_path, publish_every=publish_every)


def _without_schema_parameter(url: str) -> tuple[str, str | None]:
    """``postgresql://h/db?schema=x&sslmode=y`` -> (``postgresql://h/db?sslmode=y``, ``x``): the driver
    does not know ``schema``; every other parameter is passed on untouched."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for name, value in query if name == "schema"]
    if not schemas:
        return url, None
    rest = urlencode([(name, value) for name, value in query if name != "schema"])
    return urlunsplit(parts._replace(query=rest)), schemas[-1]


def __getattr__(name: str) -> object:
    # The PostgreSQL warehouse is imported when first asked for: psycopg and pyarrow.csv add ~15 MB to
    # every process, and a run on the embedded default (DuckDB) never needs them (benchmarks/memory.py).
    if name == "PostgresWarehouse":
        from connectors.warehouse.postgres_warehouse import PostgresWarehouse
        return PostgresWarehouse
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
