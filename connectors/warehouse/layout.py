"""How an entity table is laid out in a warehouse: names, warehouse-owned columns, SQL types per engine.

Every name that reaches SQL passes `quote`, which validates it with the contract's identifier rule
before double-quoting it, so a user field named by a portal admin can never close a quote or end a
statement. Texts (column titles used as comments) pass `quote_literal`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from connectors.tables import ColumnType, check_identifier

HISTORY_SUFFIX = "_history"
CURRENT_SUFFIX = "_current"

# Warehouse-owned columns of an entity table, in table order around the schema's columns.
LEADING_COLUMNS = ("portal", "id")
TRAILING_COLUMNS = ("_raw", "_source_modified_at", "_content_hash", "_synced_at", "_deleted_at",
                    "_deleted_reason")
# Columns the `<table>_current` view leaves out: always null there, or only for change detection.
HIDDEN_FROM_CURRENT = frozenset({"_content_hash", "_deleted_at", "_deleted_reason"})


def quote(name: str) -> str:
    """A validated, double-quoted SQL identifier."""
    check_identifier(name)
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A single-quoted SQL string literal (both engines treat backslashes literally)."""
    return "'" + text.replace("\x00", "").replace("'", "''") + "'"


@dataclass(frozen=True)
class TableNames:
    """The three relations behind one entity kind; all must be valid identifiers on their own."""

    table: str
    history: str
    current: str

    @classmethod
    def of(cls, table: str) -> TableNames:
        # PostgreSQL silently truncates identifiers beyond 63 bytes, so a long table name would make
        # its derived names collide; the contract's identifier rule caps them at 63 characters.
        names = cls(table, table + HISTORY_SUFFIX, table + CURRENT_SUFFIX)
        for name in (names.table, names.history, names.current):
            check_identifier(name)
        return names


@dataclass(frozen=True)
class Dialect:
    """What differs between the engines in DDL: type names, the content hash type, the namespace."""

    types: Mapping[ColumnType, str]
    # The same types as the engine's catalog reports them (lower case), to notice a changed type.
    catalog_types: Mapping[ColumnType, str]
    text: str
    timestamp: str
    raw: str
    content_hash: str
    namespace: str | None = None

    def qualified(self, name: str) -> str:
        if self.namespace is None:
            return quote(name)
        return f"{quote(self.namespace)}.{quote(name)}"


DUCKDB = Dialect(
    types={
        ColumnType.INTEGER: "BIGINT",
        ColumnType.DOUBLE: "DOUBLE",
        ColumnType.DECIMAL: "DECIMAL(18, 2)",
        ColumnType.TEXT: "VARCHAR",
        ColumnType.BOOLEAN: "BOOLEAN",
        ColumnType.TIMESTAMP: "TIMESTAMPTZ",
        ColumnType.DATE: "DATE",
        ColumnType.JSON: "JSON",
    },
    catalog_types={
        ColumnType.INTEGER: "bigint",
        ColumnType.DOUBLE: "double",
        ColumnType.DECIMAL: "decimal(18,2)",
        ColumnType.TEXT: "varchar",
        ColumnType.BOOLEAN: "boolean",
        ColumnType.TIMESTAMP: "timestamp with time zone",
        ColumnType.DATE: "date",
        ColumnType.JSON: "json",
    },
    text="VARCHAR",
    timestamp="TIMESTAMPTZ",
    raw="JSON",
    content_hash="UBIGINT",  # DuckDB's hash() is unsigned 64-bit
)


def postgres_dialect(schema: str) -> Dialect:
    check_identifier(schema)
    return Dialect(
        types={
            ColumnType.INTEGER: "bigint",
            ColumnType.DOUBLE: "double precision",
            ColumnType.DECIMAL: "numeric(18, 2)",
            ColumnType.TEXT: "text",
            ColumnType.BOOLEAN: "boolean",
            ColumnType.TIMESTAMP: "timestamptz",
            ColumnType.DATE: "date",
            ColumnType.JSON: "jsonb",
        },
        catalog_types={
            ColumnType.INTEGER: "bigint",
            ColumnType.DOUBLE: "double precision",
            ColumnType.DECIMAL: "numeric(18,2)",
            ColumnType.TEXT: "text",
            ColumnType.BOOLEAN: "boolean",
            ColumnType.TIMESTAMP: "timestamp with time zone",
            ColumnType.DATE: "date",
            ColumnType.JSON: "jsonb",
        },
        text="text",
        timestamp="timestamptz",
        # json, not jsonb: the record stays exactly as received (key order, spacing) and is cheaper
        # to load; multifield columns are jsonb because analysts query into them.
        raw="json",
        content_hash="bigint",  # hashtextextended() is signed 64-bit
        namespace=schema,
    )
