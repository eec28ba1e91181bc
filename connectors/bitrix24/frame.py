"""Fetched records -> the entity frame of the table contract (`connectors.tables`).

Columns and dtypes (what the warehouses receive):

* ``id`` int64; ``_source_modified_at`` datetime64[ns, UTC]; ``_raw`` string (the record as JSON);
* per `ColumnSpec`: INTEGER ``Int64``, DOUBLE ``float64``, DECIMAL ``decimal128(18, 2)[pyarrow]``,
  TEXT ``string``, BOOLEAN ``boolean``, TIMESTAMP ``datetime64[ns, UTC]``, DATE
  ``date32[day][pyarrow]``, JSON ``string`` holding JSON text. Missing values are nulls.

Legacy lists send every value as a string ("Y"/"N", "19.99", "" for empty; facts §4.3), crm.item
lists send JSON numbers and booleans (facts §4.4); both land in the same types. Conversion runs per
column with pandas/pyarrow, not per cell. A value that does not fit its column (text in an integer
field) raises `MalformedRecord`: bad input stops the step instead of being stored as null.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from connectors.bitrix24.entities import EntityKind
from connectors.bitrix24.errors import MalformedRecord
from connectors.tables import ColumnSpec, ColumnType, TableSchema

DECIMAL_TYPE = pa.decimal128(18, 2)
# True/False also match JSON 1/0 (bool hashes as int).
_BOOLEANS = {"Y": True, "N": False, "1": True, "0": False, "true": True, "false": False,
             True: True, False: False}


def to_frame(kind: EntityKind, schema: TableSchema, records: Sequence[dict]) -> pd.DataFrame:
    sources = list(dict.fromkeys([kind.id_field, kind.modified_field,
                                  *(spec.source_name for spec in schema.columns)]))
    # One pass over the dicts in C; a missing key becomes NaN, which every converter treats as null.
    table = pd.DataFrame(list(records), columns=sources, dtype=object)
    ids = table[kind.id_field]
    id_values = _integers(ids)
    if id_values.isna().any():
        _fail(kind.table, kind.id_field, ids, id_values.isna(), ids)
    modified = table[kind.modified_field]
    modified_values = _timestamps(modified)
    if modified_values.isna().any():
        _fail(kind.table, kind.modified_field, ids, modified_values.isna(), modified)

    data: dict[str, object] = {
        "id": id_values.astype("int64"),
        "_source_modified_at": modified_values,
        "_raw": pd.Series([orjson.dumps(record).decode() for record in records], dtype="string"),
    }
    for spec in schema.columns:
        data[spec.name] = _convert(kind.table, spec, table[spec.source_name], ids)
    return pd.DataFrame(data, index=pd.RangeIndex(len(records)))


def _blank(values: pd.Series) -> pd.Series:
    return values.isna() | values.isin([""])


def _convert(table: str, spec: ColumnSpec, values: pd.Series, ids: pd.Series) -> pd.Series:
    converter = _CONVERTERS[spec.type]
    converted = converter(values)
    if spec.type not in (ColumnType.TEXT, ColumnType.JSON):
        bad = converted.isna() & ~_blank(values)
        if bad.any():
            _fail(table, spec.source_name, ids, bad, values)
    return converted


def _integers(values: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(values.mask(_blank(values)), errors="coerce")
    whole = numbers.mask(numbers.notna() & (numbers % 1 != 0))
    return whole.astype("Int64")


def _doubles(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values.mask(_blank(values)), errors="coerce").astype("float64")


def _decimals(values: pd.Series) -> pd.Series:
    # Money user fields read "100.50|USD" (amount|currency); the amount is the column.
    text = values.mask(_blank(values)).astype("string").str.split("|", n=1).str[0].str.strip()
    array = pa.array(text.to_numpy(dtype=object, na_value=None), type=pa.string())
    try:
        wide = pc.cast(array, pa.decimal128(38, 10))
    except pa.ArrowInvalid:
        return pd.Series(_decimals_cellwise(text), dtype=pd.ArrowDtype(DECIMAL_TYPE))
    rounded = pc.round(wide, ndigits=2, round_mode="half_towards_infinity")
    return pd.Series(pc.cast(rounded, DECIMAL_TYPE), dtype=pd.ArrowDtype(DECIMAL_TYPE))


def _decimals_cellwise(text: pd.Series) -> pa.Array:
    """Slow path, only when a value is not a number: nulls mark the cells `_convert` reports."""
    cells: list[object] = []
    for value in text.to_numpy(dtype=object, na_value=None):
        try:
            cells.append(pc.round(pc.cast(pa.scalar(value, pa.string()), pa.decimal128(38, 10)), ndigits=2,
                                  round_mode="half_towards_infinity").cast(DECIMAL_TYPE).as_py()
                         if value is not None else None)
        except pa.ArrowInvalid:
            cells.append(None)
    return pa.array(cells, type=DECIMAL_TYPE)


def _texts(values: pd.Series) -> pd.Series:
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        return values.astype("string")

    def text(value: object) -> object:
        if isinstance(value, str):
            return value
        if isinstance(value, dict | list):
            return orjson.dumps(value).decode()
        return str(value)

    return values.map(text, na_action="ignore").astype("string")


def _booleans(values: pd.Series) -> pd.Series:
    def boolean(value: object) -> object:
        try:
            return _BOOLEANS.get(value)  # type: ignore[call-overload]
        except TypeError:
            return None

    return values.map(boolean, na_action="ignore").astype("boolean")


def _timestamps(values: pd.Series) -> pd.Series:
    # Fast path: Arrow parses Bitrix's ISO 8601 with offset (facts §4.7) natively. Anything else
    # (no offset, garbage) goes through pandas, which takes naive values as UTC and marks garbage.
    text = _strings(values)
    if text is not None:
        try:
            parsed = pc.cast(text, pa.timestamp("ns", tz="UTC"))
            return pd.Series(parsed.to_pandas(), index=values.index).astype("datetime64[ns, UTC]")
        except pa.ArrowInvalid:
            pass
    loose = values.mask(_blank(values)).astype("string")
    return pd.to_datetime(loose, utc=True, errors="coerce", format="ISO8601").astype("datetime64[ns, UTC]")


def _dates(values: pd.Series) -> pd.Series:
    # The calendar day as written (first ten characters), not shifted to UTC: a birthday stored as
    # 1990-05-01T00:00:00+03:00 is the 1st of May (facts §4.7: values carry the server's offset).
    text = _strings(values)
    if text is not None:
        try:
            days = pc.cast(pc.utf8_slice_codeunits(text, 0, 10), pa.date32())
            return pd.Series(days, index=values.index, dtype=pd.ArrowDtype(pa.date32()))
        except pa.ArrowInvalid:
            pass
    loose = values.mask(_blank(values)).astype("string").str.slice(0, 10)
    days = pd.to_datetime(loose, format="%Y-%m-%d", errors="coerce")
    return pd.Series(pc.cast(pa.Array.from_pandas(days), pa.date32()), dtype=pd.ArrowDtype(pa.date32()))


def _strings(values: pd.Series) -> pa.Array | None:
    """The column as an Arrow string array (blanks as nulls), or None if it holds non-strings."""
    cells = values.mask(_blank(values)).to_numpy(dtype=object, na_value=None)
    try:
        return pa.array(cells, type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def _json(values: pd.Series) -> pd.Series:
    return values.map(lambda value: orjson.dumps(value).decode(), na_action="ignore").astype("string")


_CONVERTERS: dict[ColumnType, Callable[[pd.Series], pd.Series]] = {
    ColumnType.INTEGER: _integers,
    ColumnType.DOUBLE: _doubles,
    ColumnType.DECIMAL: _decimals,
    ColumnType.TEXT: _texts,
    ColumnType.BOOLEAN: _booleans,
    ColumnType.TIMESTAMP: _timestamps,
    ColumnType.DATE: _dates,
    ColumnType.JSON: _json,
}


def _fail(table: str, column: str, ids: pd.Series, bad: pd.Series, values: pd.Series) -> None:
    position = int(bad.to_numpy().nonzero()[0][0])
    raise MalformedRecord(table, column, ids.iloc[position], values.iloc[position])
