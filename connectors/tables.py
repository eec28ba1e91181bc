"""The table contract between the source (Bitrix24) and the destinations (warehouses).

The connector describes each entity kind as a `TableSchema` and hands over pandas frames that
follow it; a warehouse turns the same schema into DDL. Neither side knows the other's internals.

Entity frame contract (what `connectors.bitrix24` produces and `connectors.warehouse` consumes):

* one row per entity, column ``id`` (int64) is the Bitrix24 id;
* ``_source_modified_at``: the source's own modification time (tz-aware UTC), used to ignore an
  older state arriving after a newer one;
* ``_raw``: the record exactly as received, as a JSON string;
* one column per `ColumnSpec` of the schema, already converted to its `ColumnType`
  (legacy "Y"/"N" -> bool, numeric strings -> numbers, ISO strings -> timestamps, multifields -> JSON).
The warehouse adds ``portal``, ``_synced_at``, ``_deleted_at`` and ``_deleted_reason`` itself.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field


class ColumnType(enum.StrEnum):
    INTEGER = "integer"  # int64
    DOUBLE = "double"
    DECIMAL = "decimal"  # money: DECIMAL(18, 2)
    TEXT = "text"
    BOOLEAN = "boolean"
    TIMESTAMP = "timestamp"  # timestamp with time zone
    DATE = "date"
    JSON = "json"  # multifields (PHONE, EMAIL), multiple values, nested objects


# Column names reach SQL, and user fields (UF_CRM_*) are named by portal admins: only this shape
# is accepted as an identifier; anything else is rejected before it gets near a statement.
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class InvalidIdentifier(ValueError):
    """A table or column name that is not a safe SQL identifier."""


def check_identifier(name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        raise InvalidIdentifier(f"not a safe identifier: {name!r}")
    return name


@dataclass(frozen=True)
class ColumnSpec:
    name: str  # warehouse column: snake_case of the Bitrix24 field name (STAGE_ID/stageId -> stage_id)
    type: ColumnType
    source_name: str  # the field as Bitrix24 spells it on the wire
    title: str = ""  # human label from *.fields, used for analyst views
    is_user_field: bool = False
    # Which part of the source value the column holds: "" the whole value; "currency" the currency
    # code of a money value ("100.50|USD" -> "USD"), a column beside the amount's.
    source_part: str = ""

    def __post_init__(self) -> None:
        check_identifier(self.name)


@dataclass(frozen=True)
class TableSchema:
    name: str  # e.g. "deals", "contacts", "items_1038"
    columns: tuple[ColumnSpec, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        check_identifier(self.name)
        seen: set[str] = set()
        for column in self.columns:
            if column.name in RESERVED_COLUMNS:
                raise InvalidIdentifier(f"{column.name!r} is reserved for the warehouse in {self.name}")
            if column.name in seen:
                raise InvalidIdentifier(f"duplicate column {column.name!r} in {self.name}")
            seen.add(column.name)

    def column(self, name: str) -> ColumnSpec:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)


# Columns the warehouse owns in every entity table and its `<table>_history` twin.
RESERVED_COLUMNS = ("portal", "id", "_source_modified_at", "_raw", "_synced_at", "_deleted_at",
                    "_deleted_reason", "_content_hash", "_valid_from", "_valid_to")
