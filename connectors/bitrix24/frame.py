"""Fetched records -> the entity frame of the table contract (`connectors.tables`).

Columns and dtypes (what the warehouses receive):

* ``id`` int64; ``_source_modified_at`` datetime64[ns, UTC]; ``_raw`` string (the record as JSON);
* per `ColumnSpec`: INTEGER ``Int64``, DOUBLE ``float64``, DECIMAL ``decimal128(18, 2)[pyarrow]``,
  TEXT ``string``, BOOLEAN ``boolean``, TIMESTAMP ``datetime64[ns, UTC]``, DATE
  ``date32[day][pyarrow]``, JSON ``string`` holding JSON text. Missing values are nulls. Text
  columns converted whole are Arrow-backed (``string[pyarrow]``, still ``string``): the frame goes
  on to Parquet and Arrow without a copy.

Legacy lists send every value as a string ("Y"/"N", "19.99", "" for empty; facts §4.3), crm.item
lists send JSON numbers and booleans (facts §4.4); both land in the same types. Each column is
converted by the value policy (`connectors.bitrix24.values`): a value that does not fit its column
becomes NULL and is counted in the `Coercions` report, while ``_raw`` keeps it. Only the record's
keys, its id and its modification time, must be readable: without them the record cannot be
written or ordered, so it raises `MalformedRecord`.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pandas as pd
import pyarrow as pa

from connectors.bitrix24.entities import EntityKind
from connectors.bitrix24.errors import MalformedRecord
from connectors.bitrix24.values import Coercions, convert, convert_values
from connectors.tables import ColumnSpec, ColumnType, TableSchema

__all__ = ["frame_and_coercions", "to_frame"]

_ID = ColumnSpec("id", ColumnType.INTEGER, "ID")
_MODIFIED = ColumnSpec("_source_modified_at", ColumnType.TIMESTAMP, "DATE_MODIFY")


def frame_and_coercions(kind: EntityKind, schema: TableSchema,
                        records: Sequence[dict]) -> tuple[pd.DataFrame, Coercions]:
    """The entity frame of ``records`` and the values the policy stored as NULL, per column.

    Raises `MalformedRecord` (naming the first such record) when a record's id or modification
    time is missing or unreadable; never for another field's value.
    """
    sources = list(dict.fromkeys([kind.id_field, kind.modified_field,
                                  *(spec.source_name for spec in schema.columns)]))
    # One pass over the dicts in C; a missing key becomes NaN, which every converter treats as null.
    table = pd.DataFrame(list(records), columns=sources, dtype=object)
    ids = table[kind.id_field]
    id_values, bad_ids = convert(_ID, ids)
    _require(kind.table, kind.id_field, ids, bad_ids | id_values.isna(), ids)
    modified = table[kind.modified_field]
    modified_values, bad_times = convert(_MODIFIED, modified)
    _require(kind.table, kind.modified_field, ids, bad_times | modified_values.isna(), modified)

    data: dict[str, object] = {
        "id": id_values.to_numpy(dtype="int64"),
        "_source_modified_at": modified_values.array,
        # orjson writes UTF-8 bytes; Arrow takes them as text without a round trip through str.
        "_raw": pd.arrays.ArrowStringArray(pa.array([orjson.dumps(record) for record in records],
                                                    pa.binary()).cast(pa.string())),
    }
    coercions = Coercions()
    for spec in schema.columns:
        values = table[spec.source_name]
        column, nulled = convert_values(spec, values)
        data[spec.name] = column.array if isinstance(column, pd.Series) else column
        if nulled.any():
            coercions.record(spec.name, ids, values, nulled)
    return pd.DataFrame(data, copy=False), coercions


def to_frame(kind: EntityKind, schema: TableSchema, records: Sequence[dict]) -> pd.DataFrame:
    """`frame_and_coercions` without the report."""
    return frame_and_coercions(kind, schema, records)[0]


def _require(table: str, column: str, ids: pd.Series, bad: pd.Series, values: pd.Series) -> None:
    if bad.any():
        position = int(bad.to_numpy().nonzero()[0][0])
        raise MalformedRecord(table, column, ids.iloc[position], values.iloc[position])
