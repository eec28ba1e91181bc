"""Entity frames in, Arrow tables out: the frame contract of `connectors.tables`, enforced.

A warehouse stages Arrow, not pandas: DuckDB scans Arrow without converting Python objects, and
PostgreSQL gets CSV written by Arrow's C++ writer. Rows may arrive as a pandas frame, an Arrow table
or the path of a staged Parquet or Arrow IPC file; all end up as one Arrow table with exactly the
columns of the schema in the warehouse's types, one row per id.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import feather

from connectors.tables import ColumnType, TableSchema
from connectors.warehouse.errors import FrameContractError

Rows = pd.DataFrame | pa.Table | str | os.PathLike
"""What `Transaction.upsert` accepts: an entity frame, an Arrow table, or the path of a Parquet or
Arrow IPC (Feather v2) file."""

TIMESTAMP = pa.timestamp("us", tz="UTC")
DECIMAL = pa.decimal128(18, 2)
ARROW_TYPES: dict[ColumnType, pa.DataType] = {
    ColumnType.INTEGER: pa.int64(),
    ColumnType.DOUBLE: pa.float64(),
    ColumnType.DECIMAL: DECIMAL,
    ColumnType.TEXT: pa.string(),
    ColumnType.BOOLEAN: pa.bool_(),
    ColumnType.TIMESTAMP: TIMESTAMP,
    ColumnType.DATE: pa.date32(),
    ColumnType.JSON: pa.string(),
}
KEY_COLUMNS = ("id", "_source_modified_at", "_raw")
_ARROW_FILE_MAGIC = b"ARROW1"


@dataclass(frozen=True)
class StagedRows:
    """Conformed rows: ``table`` has ``id``, ``_source_modified_at``, ``_raw`` and then ``columns``."""

    table: pa.Table
    columns: tuple[str, ...]  # schema columns present in the staged table, in schema order
    duplicates: int  # rows dropped because a later state of the same id was in the same frame


def stage(schema: TableSchema, rows: Rows, *, null_columns: frozenset[str] = frozenset()) -> StagedRows:
    """Conform rows to ``schema``; ``null_columns`` (type conflicts) are left out of the result."""
    table = _read(schema.name, rows)
    expected = set(KEY_COLUMNS) | {c.name for c in schema.columns}
    unexpected = [name for name in table.column_names if name not in expected]
    if unexpected:
        raise FrameContractError(schema.name, f"columns not in the schema: {unexpected[:5]!r}")
    missing = [name for name in (*KEY_COLUMNS, *(c.name for c in schema.columns))
               if name not in table.column_names]
    if missing:
        raise FrameContractError(schema.name, f"missing columns: {missing[:5]!r}")

    ids = _conform(schema.name, "id", table.column("id"), ColumnType.INTEGER)
    if ids.null_count:
        raise FrameContractError(schema.name, "null in column 'id'")
    arrays = [ids,
              _conform(schema.name, "_source_modified_at", table.column("_source_modified_at"),
                       ColumnType.TIMESTAMP),
              _conform(schema.name, "_raw", table.column("_raw"), ColumnType.TEXT)]
    names = list(KEY_COLUMNS)
    for column in schema.columns:
        if column.name in null_columns:
            continue
        arrays.append(_conform(schema.name, column.name, table.column(column.name), column.type))
        names.append(column.name)
    conformed = pa.Table.from_arrays(arrays, names=names)
    latest = _latest_per_id(conformed)
    return StagedRows(latest, tuple(names[len(KEY_COLUMNS):]), conformed.num_rows - latest.num_rows)


def _read(table_name: str, rows: Rows) -> pa.Table:
    if isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, pd.DataFrame):
        try:
            return pa.Table.from_pandas(rows, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise FrameContractError(table_name, f"frame cannot be read as Arrow: {error}") from None
    if isinstance(rows, str | os.PathLike):
        with open(rows, "rb") as file:
            magic = file.read(len(_ARROW_FILE_MAGIC))
        # The sync's staged chunks are Arrow IPC (`connectors.sync.staging.write_frame`); callers may
        # still hand over Parquet. The file's own magic bytes say which, whatever its name.
        if magic == _ARROW_FILE_MAGIC:
            return feather.read_table(rows)
        import pyarrow.parquet as pq  # only for chunks staged as Parquet (~9 MB when imported)
        return pq.read_table(rows)
    raise FrameContractError(table_name, f"expected a DataFrame, Arrow table or Parquet path, "
                                         f"got {type(rows).__name__}")


def _conform(table: str, name: str, column: pa.ChunkedArray, kind: ColumnType) -> pa.Array:
    array = column.combine_chunks()
    target = ARROW_TYPES[kind]
    if array.type == target:
        return array
    if target == pa.string() and pa.types.is_large_string(array.type):
        return array  # pandas' Arrow-backed strings: the same text, both engines read it as is
    source = array.type
    try:
        if kind is ColumnType.TIMESTAMP and pa.types.is_timestamp(source):
            if source.tz is None:
                raise FrameContractError(table, f"column {name!r} holds naive timestamps; "
                                                "the contract wants them tz-aware (UTC)")
            # Nanoseconds below a microsecond cannot be stored by either engine.
            return pc.cast(array, target, safe=False)
        if kind is ColumnType.DECIMAL and (pa.types.is_floating(source) or pa.types.is_decimal(source)):
            return pc.cast(pc.round(array, 2, round_mode="half_towards_infinity"), target, safe=False)
        if kind in (ColumnType.JSON, ColumnType.TEXT) and _is_nested(source):
            return pa.array([None if v is None else orjson.dumps(v).decode() for v in array.to_pylist()],
                            pa.string())
        return pc.cast(array, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as error:
        raise FrameContractError(table, f"column {name!r} of type {source} does not convert to "
                                        f"{kind.value}: {error}") from None


def _is_nested(kind: pa.DataType) -> bool:
    return pa.types.is_struct(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind) \
        or pa.types.is_map(kind)


def _latest_per_id(table: pa.Table) -> pa.Table:
    """One row per id: the latest ``_source_modified_at``, the last one on a tie (ON CONFLICT needs it)."""
    ids = table.column("id").to_numpy()
    if len(np.unique(ids)) == len(ids):
        return table
    positions = pa.array(np.arange(table.num_rows))
    ordered = table.append_column("_position", positions).sort_by(
        [("id", "ascending"), ("_source_modified_at", "ascending"), ("_position", "ascending")])
    sorted_ids = ordered.column("id").to_numpy()
    last_of_id = np.append(sorted_ids[1:] != sorted_ids[:-1], True)
    return ordered.filter(pa.array(last_of_id)).drop_columns(["_position"])


def without_nul(table: pa.Table, json_columns: Collection[str]) -> pa.Table:
    """``table`` with the NUL character taken out of every text value, for PostgreSQL only.

    PostgreSQL's ``text`` refuses the byte 0x00 (COPY fails: "invalid byte sequence"), and ``jsonb``
    (and ``json`` operators) refuse its escape ``\\u0000``: one such value would stop the portal's
    loop. String columns lose the character; in ``json_columns`` (JSON text) the strings of the
    documents do, keys included. DuckDB stores text exactly and does not use this.
    """
    for position, name in enumerate(table.column_names):
        array = table.column(position).combine_chunks()
        if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
            continue
        cleaned = _json_without_nul(array) if name in json_columns else _text_without_nul(array)
        if cleaned is not None:
            table = table.set_column(position, name, cleaned)
    return table


def _text_without_nul(array: pa.Array) -> pa.Array | None:
    if not pc.any(pc.match_substring(array, "\x00")).as_py():
        return None
    return pc.replace_substring(array, "\x00", "")


def _json_without_nul(array: pa.Array) -> pa.Array | None:
    suspects = pc.fill_null(pc.match_substring(array, "\\u0000"), False)
    if not pc.any(suspects).as_py():
        return None
    values = array.to_pylist()
    for position in np.flatnonzero(suspects.to_numpy(zero_copy_only=False)):
        values[position] = orjson.dumps(_strip_nul(orjson.loads(values[position]))).decode()
    return pa.array(values, array.type)


def _strip_nul(value: object) -> object:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_strip_nul(item) for item in value]
    if isinstance(value, dict):
        return {_strip_nul(key): _strip_nul(item) for key, item in value.items()}
    return value
