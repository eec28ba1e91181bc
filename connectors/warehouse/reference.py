"""Dimension tables and the stage history in a SQL warehouse (DuckDB and PostgreSQL alike).

Dimensions are keyed by (portal, natural key) and replaced per portal in ONE transaction: an analyst
never sees half a refresh, and a crash leaves the previous refresh in place. The stage history is
keyed (portal, entity_type_id, id); rows are appended with ``ON CONFLICT DO NOTHING`` and the
high-water mark per (portal, entity type) in ``_stage_history_marks`` moves in the same transaction,
so a crash before the commit loses nothing (the next read starts at the old mark) and a crash after
it duplicates nothing (the key refuses a row twice).

Rows travel as one text array per column (``unnest`` on both engines) and are cast to the column
type in SQL: dimensions are small (hundreds to thousands of rows), history chunks 2,500 rows.
"""

from __future__ import annotations

import json
import math
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from connectors.dimensions import DEAL_PRODUCT_ROWS, DIMENSIONS, STAGE_HISTORY, DimensionSchema
from connectors.tables import ColumnType
from connectors.warehouse.errors import TransactionStateError, WarehouseError
from connectors.warehouse.layout import Dialect, quote, quote_literal
from connectors.warehouse.sql_warehouse import SqlWarehouse

MARKS_TABLE = "_stage_history_marks"
PRODUCT_ROW_MARKS_TABLE = "_product_row_marks"
# Warehouse objects whose reference tables exist (checked once per object, like entity tables).
_READY: weakref.WeakSet[SqlWarehouse] = weakref.WeakSet()


def create_statements(d: Dialect, dimension: DimensionSchema) -> list[str]:
    columns = ",\n    ".join([
        f"portal {d.text} NOT NULL",
        *(f"{quote(c.name)} {d.types[c.type]}" + (" NOT NULL" if c.name in dimension.key else "")
          for c in dimension.columns),
        f"_synced_at {d.timestamp} NOT NULL",
        "PRIMARY KEY (portal, " + ", ".join(quote(k) for k in dimension.key) + ")",
    ])
    return [f"CREATE TABLE IF NOT EXISTS {d.qualified(dimension.name)} (\n    {columns})"]


def _marks_statement(d: Dialect) -> str:
    return (f"CREATE TABLE IF NOT EXISTS {d.qualified(MARKS_TABLE)} (portal {d.text} NOT NULL, "
            f"entity_type_id {d.types[ColumnType.INTEGER]} NOT NULL, last_id {d.types[ColumnType.INTEGER]} NOT NULL, "
            f"updated_at {d.timestamp} NOT NULL, PRIMARY KEY (portal, entity_type_id))")


def ensure_reference_tables(wh: SqlWarehouse) -> None:
    """Create the dimension tables, ``stage_history`` and its marks if missing (idempotent; once per
    warehouse object)."""
    if wh in _READY:
        return
    d = wh.dialect
    with write_transaction(wh, publish=False):
        wh._lock_ddl()
        for dimension in (*DIMENSIONS, STAGE_HISTORY, DEAL_PRODUCT_ROWS):
            for statement in create_statements(d, dimension):
                wh._execute(statement)
            wh._execute(f"COMMENT ON TABLE {d.qualified(dimension.name)} IS {quote_literal(dimension.title)}")
        wh._execute(_marks_statement(d))
        wh._execute(f"CREATE TABLE IF NOT EXISTS {d.qualified(PRODUCT_ROW_MARKS_TABLE)} (portal {d.text} NOT NULL "
                    f"PRIMARY KEY, synced_through {d.timestamp} NOT NULL, updated_at {d.timestamp} NOT NULL)")
    _READY.add(wh)


def replace_dimensions(wh: SqlWarehouse, portal: str, frames: Mapping[str, pd.DataFrame]) -> dict[str, int]:
    """Replace every given dimension of ``portal`` in one transaction; returns rows per dimension.

    Raises `WarehouseError` for a frame whose columns differ from its `DimensionSchema`."""
    _dimensions_of(frames)
    ensure_reference_tables(wh)
    with write_transaction(wh):
        return write_dimensions(wh, portal, frames)


def write_dimensions(wh: SqlWarehouse, portal: str, frames: Mapping[str, pd.DataFrame]) -> dict[str, int]:
    """`replace_dimensions` inside the caller's open transaction (the CDC commit replaces them with
    the journal's mark, `connectors.sync.steps`); the tables must exist (`ensure_reference_tables`).

    Returns rows per dimension; raises `WarehouseError` for an unknown dimension or a frame whose
    columns differ from its `DimensionSchema`."""
    by_name = _dimensions_of(frames)
    counts: dict[str, int] = {}
    now = datetime.now(UTC)
    # Two writers replacing one portal's rows at once (the schedule's refresh and a sync run's, where
    # the pool allows both) would insert the same keys: on PostgreSQL they take turns on this lock.
    wh._lock_ddl()
    for name, frame in frames.items():
        dimension = by_name[name]
        _check_columns(dimension, frame)
        wh._execute(f"DELETE FROM {wh.dialect.qualified(name)} WHERE portal = %(portal)s::text",
                    {"portal": portal})
        _insert(wh, dimension, portal, frame, now)
        counts[name] = len(frame)
    return counts


def _dimensions_of(frames: Mapping[str, pd.DataFrame]) -> dict[str, DimensionSchema]:
    by_name = {dimension.name: dimension for dimension in DIMENSIONS}
    unknown = set(frames) - set(by_name)
    if unknown:
        raise WarehouseError(f"unknown dimensions: {sorted(unknown)}")
    return by_name


def dimension_texts(dimension: DimensionSchema, frame: pd.DataFrame) -> dict[str, list[str | None]]:
    """Each column of ``frame`` as the texts its column type parses (None for a missing value): what
    the warehouse casts in SQL, and what a frame staged as text between two steps holds. Taking
    its own output again gives the same texts."""
    return {column.name: [_text(value, column.type) for value in frame[column.name].tolist()]
            for column in dimension.columns}


def stage_history_marks(wh: SqlWarehouse, portal: str) -> dict[int, int]:
    """The last loaded history id per entity type of ``portal`` (types never loaded are absent)."""
    ensure_reference_tables(wh)
    rows = wh.query(f"SELECT entity_type_id, last_id FROM {wh.dialect.qualified(MARKS_TABLE)} "
                    "WHERE portal = %(portal)s::text", {"portal": portal})
    return {int(entity_type_id): int(last_id) for entity_type_id, last_id in rows}


def append_stage_history(wh: SqlWarehouse, portal: str, frame: pd.DataFrame,
                         marks: Mapping[int, int]) -> int:
    """Append history rows and move the marks to ``marks`` (the reader's new positions), atomically.

    Returns how many rows were new. A mark never moves back: a stale reader cannot rewind it."""
    _check_columns(STAGE_HISTORY, frame)
    ensure_reference_tables(wh)
    d = wh.dialect
    now = datetime.now(UTC)
    with write_transaction(wh):
        before = _count(wh, portal)
        _insert(wh, STAGE_HISTORY, portal, frame, now, on_conflict_nothing=True)
        if marks:
            types = [int(t) for t in marks]
            wh._execute(
                f"""INSERT INTO {d.qualified(MARKS_TABLE)} AS m (portal, entity_type_id, last_id, updated_at)
                SELECT %(portal)s::text, unnest(%(types)s::bigint[]), unnest(%(marks)s::bigint[]), %(now)s
                ON CONFLICT (portal, entity_type_id) DO UPDATE
                SET last_id = greatest(m.last_id, excluded.last_id), updated_at = excluded.updated_at""",
                {"portal": portal, "types": types, "marks": [int(marks[t]) for t in types], "now": now})
        return _count(wh, portal) - before


def product_rows_mark(wh: SqlWarehouse, portal: str) -> datetime | None:
    """The ``_synced_at`` of deals whose product rows are stored (None: never loaded)."""
    ensure_reference_tables(wh)
    rows = wh.query(f"SELECT synced_through FROM {wh.dialect.qualified(PRODUCT_ROW_MARKS_TABLE)} "
                    "WHERE portal = %(portal)s::text", {"portal": portal})
    return rows[0][0] if rows else None


def deals_changed_since(wh: SqlWarehouse, portal: str, since: datetime | None) -> tuple[list[int], list[int],
                                                                                       datetime | None]:
    """Deals of ``portal`` written after ``since`` (all when None): (live ids, tombstoned ids, newest
    ``_synced_at``). Empty when there is no deals table yet."""
    if wh._stored_columns("deals") is None:
        return [], [], None
    rows = wh.query(f"SELECT id, _deleted_at IS NOT NULL, _synced_at FROM {wh.dialect.qualified('deals')} "
                    "WHERE portal = %(portal)s::text AND (%(since)s::timestamptz IS NULL OR _synced_at > %(since)s)",
                    {"portal": portal, "since": since})
    live = sorted(int(deal_id) for deal_id, deleted, _ in rows if not deleted)
    gone = sorted(int(deal_id) for deal_id, deleted, _ in rows if deleted)
    return live, gone, max((synced for _, _, synced in rows), default=None)


def replace_product_rows(wh: SqlWarehouse, portal: str, deal_ids: list[int], frame: pd.DataFrame,
                         mark: datetime | None = None) -> int:
    """Replace the product rows of ``deal_ids`` (deleted deals: none) with ``frame``, and move the mark
    to ``mark`` if given, in one transaction; returns the rows stored."""
    _check_columns(DEAL_PRODUCT_ROWS, frame)
    ensure_reference_tables(wh)
    d = wh.dialect
    with write_transaction(wh):
        if deal_ids:
            wh._execute(f"DELETE FROM {d.qualified(DEAL_PRODUCT_ROWS.name)} WHERE portal = %(portal)s::text "
                        "AND owner_id IN (SELECT unnest(%(ids)s::bigint[]))",
                        {"portal": portal, "ids": [int(i) for i in deal_ids]})
        _insert(wh, DEAL_PRODUCT_ROWS, portal, frame, datetime.now(UTC))
        if mark is not None:
            wh._execute(f"""INSERT INTO {d.qualified(PRODUCT_ROW_MARKS_TABLE)} AS m (portal, synced_through, updated_at)
                VALUES (%(portal)s::text, %(mark)s, %(now)s) ON CONFLICT (portal) DO UPDATE
                SET synced_through = greatest(m.synced_through, excluded.synced_through),
                    updated_at = excluded.updated_at""",
                        {"portal": portal, "mark": mark, "now": datetime.now(UTC)})
    return len(frame)


def _count(wh: SqlWarehouse, portal: str) -> int:
    return int(wh.query(f"SELECT count(*) FROM {wh.dialect.qualified(STAGE_HISTORY.name)} "
                        "WHERE portal = %(portal)s::text", {"portal": portal})[0][0])


@contextmanager
def write_transaction(wh: SqlWarehouse, publish: bool = True) -> Iterator[None]:
    """A transaction for statements of this package (dimensions, history, analysts' views).

    Same rules as `Warehouse.transaction`: one open transaction at a time (else
    `TransactionStateError`); DuckDB publishes the analysts' snapshot after the commit."""
    if wh._in_transaction:
        raise TransactionStateError("a transaction is already open on this warehouse")
    wh._in_transaction = True
    try:
        with wh._atomic():
            yield
    finally:
        wh._in_transaction = False
    if publish:
        wh._after_commit()


def _check_columns(dimension: DimensionSchema, frame: pd.DataFrame) -> None:
    if tuple(frame.columns) != dimension.column_names:
        raise WarehouseError(f"{dimension.name}: frame columns {list(frame.columns)} differ from "
                             f"{list(dimension.column_names)}")


def _insert(wh: SqlWarehouse, dimension: DimensionSchema, portal: str, frame: pd.DataFrame, now: datetime,
            *, on_conflict_nothing: bool = False) -> None:
    if frame.empty:
        return
    d = wh.dialect
    names = [quote(c.name) for c in dimension.columns]
    params: dict[str, Any] = {"portal": portal, "now": now}
    unnests = []
    casts = []
    texts = dimension_texts(dimension, frame)
    for index, column in enumerate(dimension.columns):
        key = f"c{index}"
        params[key] = texts[column.name]
        unnests.append(f"unnest(%({key})s::text[]) AS {key}")
        casts.append(f"CAST(u.{key} AS {d.types[column.type]})")
    conflict = (" ON CONFLICT (portal, " + ", ".join(quote(k) for k in dimension.key) + ") DO NOTHING"
                if on_conflict_nothing else "")
    wh._execute(
        f"INSERT INTO {d.qualified(dimension.name)} (portal, {', '.join(names)}, _synced_at) "
        f"SELECT %(portal)s::text, {', '.join(casts)}, %(now)s FROM (SELECT {', '.join(unnests)}) AS u"
        f"{conflict}", params)


def _text(value: Any, column_type: ColumnType) -> str | None:
    """A value as the text its column type parses (both engines cast ISO times, 'true', '12.50')."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    if column_type is ColumnType.INTEGER:
        return str(int(value))
    if column_type is ColumnType.BOOLEAN:
        # A text is this function's own output ('true'/'false'), read back from a staged frame.
        return value if isinstance(value, str) else ("true" if bool(value) else "false")
    if column_type is ColumnType.JSON and not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, datetime | pd.Timestamp):
        return value.isoformat()
    return str(value).replace("\x00", "")
