"""Schema evolution: what to change when a `TableSchema` meets the table a warehouse already holds.

Portal admins add user fields (UF_CRM_*) at any time, so a new field becomes a new column
(ALTER TABLE ADD COLUMN) and every stored row is kept. Nothing is ever dropped: a column that left
the schema stays as it is.

A column whose type changed is migrated in place where the value policy has an SQL twin
(`migration`): text to BOOLEAN (Y/N, 1/0, true/false), text to BIGINT (integral numbers in range),
text, double or bigint to DECIMAL(18, 2) (rounded half away from zero to cents), bigint to DOUBLE,
anything to text. ``ALTER TABLE ... SET DATA TYPE ... USING`` runs on the table and its history in
the same transaction on DuckDB and PostgreSQL; a stored value that does not convert becomes NULL,
and the record's ``_raw`` still holds it. These are the changes of issue 10's consistent types
(Y/N flags, amounts, reference ids of tables loaded before) and of a user field whose type an admin
changed between these types. Any other change (text to a timestamp, JSON to a number ...) is a
conflict: reported, the column written as null from then on, the value kept in ``_raw``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from connectors.tables import ColumnSpec, ColumnType, TableSchema
from connectors.warehouse.layout import Dialect, quote

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TypeConflict:
    table: str
    column: str
    stored_type: str  # as the engine's catalog reports it
    schema_type: ColumnType


@dataclass(frozen=True)
class TypeMigration:
    """A stored column converted to the schema's type: ``using`` is the SQL of its new values."""

    table: str
    column: str
    stored_type: str  # as the engine's catalog reports it
    schema_type: ColumnType
    using: str


@dataclass(frozen=True)
class SchemaChanges:
    """What `ensure_table` did (or found): a created table, added columns, migrated columns, conflicts."""

    table: str
    created: bool = False
    added: tuple[ColumnSpec, ...] = ()
    conflicts: tuple[TypeConflict, ...] = ()
    migrated: tuple[TypeMigration, ...] = ()

    @property
    def null_columns(self) -> frozenset[str]:
        """Columns written as null because their stored type differs from the schema's."""
        return frozenset(conflict.column for conflict in self.conflicts)

    @property
    def changed(self) -> bool:
        return self.created or bool(self.added) or bool(self.migrated)


def plan_changes(schema: TableSchema, stored: Mapping[str, str] | None, dialect: Dialect) -> SchemaChanges:
    """Compare a schema with the stored columns (name -> catalog type), or with no table at all."""
    if stored is None:
        return SchemaChanges(schema.name, created=True)
    normalized = {name: _normalize(kind) for name, kind in stored.items()}
    added: list[ColumnSpec] = []
    conflicts: list[TypeConflict] = []
    migrated: list[TypeMigration] = []
    for column in schema.columns:
        stored_type = normalized.get(column.name)
        if stored_type is None:
            added.append(column)
        elif stored_type != dialect.catalog_types[column.type]:
            using = migration(dialect, column.name, stored_type, column.type)
            if using is None:
                conflicts.append(TypeConflict(schema.name, column.name, stored[column.name], column.type))
            else:
                migrated.append(TypeMigration(schema.name, column.name, stored[column.name], column.type, using))
    for conflict in conflicts:
        log.warning("%s.%s is stored as %s but the portal now sends %s; writing null there, the value "
                    "stays in _raw", conflict.table, conflict.column, conflict.stored_type,
                    conflict.schema_type.value)
    return SchemaChanges(schema.name, added=tuple(added), conflicts=tuple(conflicts), migrated=tuple(migrated))


_TEXTS = frozenset({"varchar", "text", "character varying"})
_DOUBLES = frozenset({"double", "double precision", "float", "real"})
_INTEGERS = frozenset({"bigint", "integer", "smallint"})
# SIMILAR TO means the same on both engines for these patterns (a full match; [.] is a literal dot).
_INTEGRAL = "[+-]?[0-9]{1,18}"  # 18 digits always fit int64
# DECIMAL(18, 2) holds 16 digits before the point. Plain numbers only, and integers of at most 18
# digits: an exponent ("1e3", which the value policy reads) or a 19-digit number could overflow the
# cast and abort the ALTER. Such a rare value is NULL here and stays in _raw; the record's next
# change, or a full resync, writes the policy's value.
_AMOUNT = "[+-]?([0-9]{1,16}([.][0-9]{0,10})?|[.][0-9]{1,10})"
_FLAGS = {"Y": "TRUE", "1": "TRUE", "TRUE": "TRUE", "N": "FALSE", "0": "FALSE", "FALSE": "FALSE"}


def migration(d: Dialect, column: str, stored_type: str, target: ColumnType) -> str | None:
    """The SQL expression converting stored column ``column`` (normalized catalog type ``stored_type``)
    to ``target`` with the value policy's rules (`connectors.bitrix24.values`), NULL where a value does
    not convert; None when there is no such conversion."""
    c = quote(column)
    decimal = d.types[ColumnType.DECIMAL]
    if target is ColumnType.TEXT:
        return f"CAST({c} AS {d.types[ColumnType.TEXT]})"
    if stored_type in _TEXTS:
        if target is ColumnType.BOOLEAN:
            cases = " ".join(f"WHEN '{word}' THEN {flag}" for word, flag in _FLAGS.items())
            return f"CASE upper(trim({c})) {cases} END"
        if target is ColumnType.INTEGER:
            return (f"CASE WHEN trim({c}) SIMILAR TO '{_INTEGRAL}' "
                    f"THEN CAST(trim({c}) AS {d.types[ColumnType.INTEGER]}) END")
        if target is ColumnType.DECIMAL:
            return (f"CASE WHEN trim({c}) SIMILAR TO '{_AMOUNT}' "
                    f"THEN CAST(round(CAST(trim({c}) AS DECIMAL(38, 10)), 2) AS {decimal}) END")
    if stored_type in _DOUBLES | _INTEGERS and target is ColumnType.DECIMAL:
        # Through 10 decimal places first: the double 2.675 is 2.67499999..., the amount 2.675 rounds
        # to 2.68 as the policy rounds the portal's "2.675". NaN and infinities fail the range test.
        return (f"CASE WHEN abs({c}) < 1e16 "
                f"THEN CAST(round(CAST({c} AS DECIMAL(38, 10)), 2) AS {decimal}) END")
    if stored_type in _INTEGERS and target is ColumnType.DOUBLE:
        return f"CAST({c} AS {d.types[ColumnType.DOUBLE]})"
    return None


def _normalize(catalog_type: str) -> str:
    return catalog_type.lower().replace(" ,", ",").replace(", ", ",")
