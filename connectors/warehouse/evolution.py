"""Schema evolution: what to change when a `TableSchema` meets the table a warehouse already holds.

Portal admins add user fields (UF_CRM_*) at any time, so a new field becomes a new column
(ALTER TABLE ADD COLUMN) and every stored row is kept. Nothing is ever dropped: a column that left
the schema stays as it is. A field whose type changed cannot be converted in place without losing
values, so the conflict is reported, the column is written as null from then on, and the value
lives on in ``_raw``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from connectors.tables import ColumnSpec, ColumnType, TableSchema
from connectors.warehouse.layout import Dialect

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TypeConflict:
    table: str
    column: str
    stored_type: str  # as the engine's catalog reports it
    schema_type: ColumnType


@dataclass(frozen=True)
class SchemaChanges:
    """What `ensure_table` did (or found): a created table, added columns, type conflicts."""

    table: str
    created: bool = False
    added: tuple[ColumnSpec, ...] = ()
    conflicts: tuple[TypeConflict, ...] = ()

    @property
    def null_columns(self) -> frozenset[str]:
        """Columns written as null because their stored type differs from the schema's."""
        return frozenset(conflict.column for conflict in self.conflicts)

    @property
    def changed(self) -> bool:
        return self.created or bool(self.added)


def plan_changes(schema: TableSchema, stored: Mapping[str, str] | None, dialect: Dialect) -> SchemaChanges:
    """Compare a schema with the stored columns (name -> catalog type), or with no table at all."""
    if stored is None:
        return SchemaChanges(schema.name, created=True)
    normalized = {name: _normalize(kind) for name, kind in stored.items()}
    added: list[ColumnSpec] = []
    conflicts: list[TypeConflict] = []
    for column in schema.columns:
        stored_type = normalized.get(column.name)
        if stored_type is None:
            added.append(column)
        elif stored_type != dialect.catalog_types[column.type]:
            conflicts.append(TypeConflict(schema.name, column.name, stored[column.name], column.type))
    for conflict in conflicts:
        log.warning("%s.%s is stored as %s but the portal now sends %s; writing null there, the value "
                    "stays in _raw", conflict.table, conflict.column, conflict.stored_type,
                    conflict.schema_type.value)
    return SchemaChanges(schema.name, added=tuple(added), conflicts=tuple(conflicts))


def _normalize(catalog_type: str) -> str:
    return catalog_type.lower().replace(" ,", ",").replace(", ", ",")
