"""DDL for one entity kind: its table, its `<table>_history` and its `<table>_current` view.

The table is keyed by (portal, id). The history keeps one row per applied version with the typed
columns (not ``_raw``, to keep its cost down) and a validity interval, so analysts can follow stage
changes. The current view shows live rows only, in table order, so columns added later stay at the
end and PostgreSQL can replace the view in place.
"""

from __future__ import annotations

from collections.abc import Sequence

from connectors.tables import ColumnSpec, ColumnType, TableSchema
from connectors.warehouse.layout import HIDDEN_FROM_CURRENT, Dialect, TableNames, quote, quote_literal

HISTORY_TRAILING_COLUMNS = ("_source_modified_at", "_content_hash", "_valid_from", "_valid_to", "_synced_at")


def create_statements(d: Dialect, schema: TableSchema) -> list[str]:
    names = TableNames.of(schema.name)
    bigint = d.types[ColumnType.INTEGER]
    columns = [f"{quote(c.name)} {d.types[c.type]}" for c in schema.columns]
    table = ",\n    ".join([
        f"portal {d.text} NOT NULL",
        f"id {bigint} NOT NULL",
        *columns,
        f"_raw {d.raw}",
        f"_source_modified_at {d.timestamp}",
        f"_content_hash {d.content_hash}",
        f"_synced_at {d.timestamp} NOT NULL",
        f"_deleted_at {d.timestamp}",
        f"_deleted_reason {d.text}",
        "PRIMARY KEY (portal, id)",
    ])
    history = ",\n    ".join([
        f"portal {d.text} NOT NULL",
        f"id {bigint} NOT NULL",
        *columns,
        f"_source_modified_at {d.timestamp}",
        f"_content_hash {d.content_hash}",
        f"_valid_from {d.timestamp} NOT NULL",
        f"_valid_to {d.timestamp}",
        f"_synced_at {d.timestamp} NOT NULL",
    ])
    return [
        f"CREATE TABLE IF NOT EXISTS {d.qualified(names.table)} (\n    {table})",
        f"CREATE TABLE IF NOT EXISTS {d.qualified(names.history)} (\n    {history})",
    ]


def add_column_statements(d: Dialect, table: str, column: ColumnSpec) -> list[str]:
    names = TableNames.of(table)
    definition = f"{quote(column.name)} {d.types[column.type]}"
    return [f"ALTER TABLE {d.qualified(name)} ADD COLUMN IF NOT EXISTS {definition}"
            for name in (names.table, names.history)]


def alter_type_statements(d: Dialect, table: str, column: str, target: ColumnType, using: str) -> list[str]:
    """Convert ``column`` of the table and its history to ``target``; ``using`` gives the new values.

    PostgreSQL refuses to retype a column a view reads: drop ``<table>_current`` first
    (`drop_current_view_statement`) and create it again after.
    """
    names = TableNames.of(table)
    return [f"ALTER TABLE {d.qualified(name)} ALTER COLUMN {quote(column)} SET DATA TYPE {d.types[target]} "
            f"USING ({using})" for name in (names.table, names.history)]


def drop_current_view_statement(d: Dialect, table: str) -> str:
    return f"DROP VIEW IF EXISTS {d.qualified(TableNames.of(table).current)}"


def current_view_statement(d: Dialect, table: str, stored_columns: Sequence[str]) -> str:
    names = TableNames.of(table)
    visible = ", ".join(quote(c) for c in stored_columns if c not in HIDDEN_FROM_CURRENT)
    return (f"CREATE OR REPLACE VIEW {d.qualified(names.current)} AS "
            f"SELECT {visible} FROM {d.qualified(names.table)} WHERE _deleted_at IS NULL")


def comment_statements(d: Dialect, schema: TableSchema) -> list[str]:
    """Titles from ``*.fields`` as column comments, so analysts see "Stage" next to ``stage_id``."""
    names = TableNames.of(schema.name)
    return [f"COMMENT ON COLUMN {d.qualified(relation)}.{quote(c.name)} IS {quote_literal(c.title)}"
            for c in schema.columns if c.title
            for relation in (names.table, names.history, names.current)]
