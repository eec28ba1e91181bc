"""Records -> the entity frame of the table contract (pure): dtypes, conversions, strictness.

The warehouse consumes this frame as is, so every ColumnType must arrive converted: legacy strings
("Y"/"N", "19.99", "" for empty) and crm.item JSON values land in the same dtypes, and a value that
does not fit raises instead of silently becoming null.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pandas as pd
import pytest

from connectors.bitrix24.entities import DEAL, smart_process_kind
from connectors.bitrix24.errors import MalformedRecord
from connectors.bitrix24.frame import to_frame
from connectors.tables import ColumnSpec, ColumnType, TableSchema

SCHEMA = TableSchema("deals", (
    ColumnSpec("title", ColumnType.TEXT, "TITLE"),
    ColumnSpec("opportunity", ColumnType.DOUBLE, "OPPORTUNITY"),
    ColumnSpec("budget", ColumnType.DECIMAL, "UF_CRM_BUDGET", is_user_field=True),
    ColumnSpec("closed", ColumnType.BOOLEAN, "CLOSED"),
    ColumnSpec("begindate", ColumnType.DATE, "BEGINDATE"),
    ColumnSpec("date_create", ColumnType.TIMESTAMP, "DATE_CREATE"),
    ColumnSpec("category_id", ColumnType.INTEGER, "CATEGORY_ID"),
    ColumnSpec("tags", ColumnType.JSON, "UF_CRM_TAGS"),
))


def legacy(deal_id: str, **values: object) -> dict:
    record = {"ID": deal_id, "TITLE": f"Deal {deal_id}", "OPPORTUNITY": "19999.99",
              "UF_CRM_BUDGET": "100.555|USD", "CLOSED": "N", "BEGINDATE": "2024-05-01T00:00:00+03:00",
              "DATE_CREATE": "2024-05-01T10:00:00+03:00", "DATE_MODIFY": "2024-05-02T10:00:00+02:00",
              "CATEGORY_ID": "0", "UF_CRM_TAGS": ["a", "b"]}
    record.update(values)
    return record


def test_legacy_strings_become_typed_columns() -> None:
    frame = to_frame(DEAL, SCHEMA, [legacy("1"), legacy("2", CLOSED="Y", OPPORTUNITY="", UF_CRM_BUDGET=None,
                                                      BEGINDATE="", DATE_CREATE=None, CATEGORY_ID=None,
                                                      UF_CRM_TAGS=None, TITLE=None)])
    assert list(frame.columns) == ["id", "_source_modified_at", "_raw", "title", "opportunity", "budget",
                                   "closed", "begindate", "date_create", "category_id", "tags"]
    assert str(frame["id"].dtype) == "int64"
    assert str(frame["_source_modified_at"].dtype) == "datetime64[ns, UTC]"
    first = frame.iloc[0]
    assert first["_source_modified_at"] == pd.Timestamp(datetime(2024, 5, 2, 8, 0, tzinfo=UTC))
    assert first["opportunity"] == pytest.approx(19999.99)
    assert first["budget"] == Decimal("100.56")
    assert bool(first["closed"]) is False and bool(frame.iloc[1]["closed"]) is True
    # The calendar day as written, not shifted to UTC (which would be April 30th).
    assert first["begindate"] == date(2024, 5, 1)
    assert first["date_create"] == pd.Timestamp("2024-05-01T07:00:00Z")
    assert first["category_id"] == 0
    assert json.loads(first["tags"]) == ["a", "b"]
    assert json.loads(first["_raw"]) == legacy("1")
    second = frame.iloc[1]
    assert pd.isna(second["opportunity"]) and pd.isna(second["budget"]) and pd.isna(second["begindate"])
    assert pd.isna(second["date_create"]) and pd.isna(second["category_id"]) and pd.isna(second["tags"])
    assert pd.isna(second["title"])


def test_dtypes_are_the_documented_ones_even_for_an_empty_frame() -> None:
    dtypes = {name: str(dtype) for name, dtype in to_frame(DEAL, SCHEMA, []).dtypes.items()}
    assert dtypes == {"id": "int64", "_source_modified_at": "datetime64[ns, UTC]", "_raw": "string",
                      "title": "string", "opportunity": "float64", "budget": "decimal128(18, 2)[pyarrow]",
                      "closed": "boolean", "begindate": "date32[day][pyarrow]",
                      "date_create": "datetime64[ns, UTC]", "category_id": "Int64", "tags": "string"}


def test_item_values_arrive_as_json_numbers_and_booleans() -> None:
    kind = smart_process_kind(1038)
    schema = TableSchema("items_1038", (ColumnSpec("opportunity", ColumnType.DECIMAL, "opportunity"),
                                        ColumnSpec("is_manual", ColumnType.BOOLEAN, "isManualOpportunity"),
                                        ColumnSpec("title", ColumnType.TEXT, "title"),
                                        ColumnSpec("assigned_by_id", ColumnType.INTEGER, "assignedById")))
    frame = to_frame(kind, schema, [{"id": 3, "updatedTime": "2026-01-01T00:00:00+03:00",
                                     "opportunity": 19000, "isManualOpportunity": True, "title": 42,
                                     "assignedById": 1}])
    row = frame.iloc[0]
    assert (row["id"], row["opportunity"], bool(row["is_manual"]), row["title"], row["assigned_by_id"]) == (
        3, Decimal("19000.00"), True, "42", 1)


@pytest.mark.parametrize(("column", "value"), [
    ("CATEGORY_ID", "abc"), ("CATEGORY_ID", "1.5"), ("OPPORTUNITY", "lots"), ("CLOSED", "maybe"),
    ("DATE_CREATE", "yesterday"), ("UF_CRM_BUDGET", "cheap|USD"), ("BEGINDATE", "sometime"),
])
def test_a_value_that_does_not_fit_its_column_is_an_error_naming_the_record(column: str, value: str) -> None:
    with pytest.raises(MalformedRecord) as raised:
        to_frame(DEAL, SCHEMA, [legacy("1"), legacy("7", **{column: value})])
    assert raised.value.column == column and raised.value.entity_id == "7"


def test_a_record_without_modification_time_is_an_error() -> None:
    with pytest.raises(MalformedRecord, match="DATE_MODIFY"):
        to_frame(DEAL, SCHEMA, [legacy("1", DATE_MODIFY=None)])


def test_ten_thousand_records_convert_quickly() -> None:
    import time

    records = [legacy(str(i)) for i in range(1, 10_001)]
    started = time.perf_counter()
    frame = to_frame(DEAL, SCHEMA, records)
    elapsed = time.perf_counter() - started
    assert len(frame) == 10_000 and frame["id"].is_monotonic_increasing
    assert elapsed < 5.0, f"{elapsed:.2f} s for 10,000 records"
