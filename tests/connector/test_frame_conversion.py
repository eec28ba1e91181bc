"""Records -> the entity frame of the table contract (pure): dtypes, conversions, the value policy.

The warehouse consumes this frame as is, so every ColumnType must arrive converted: legacy strings
("Y"/"N", "19.99", "" for empty) and crm.item JSON values land in the same dtypes. A value that does
not fit its column becomes NULL and is counted per column with examples (never silently, never
blocking the record); the portal's own empty values are NULL and not counted. Only an unreadable id
or modification time makes a record malformed.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pandas as pd
import pytest

from connectors.bitrix24.entities import DEAL, smart_process_kind
from connectors.bitrix24.errors import MalformedRecord
from connectors.bitrix24.frame import frame_and_coercions, to_frame
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
    ColumnSpec("budget_currency", ColumnType.TEXT, "UF_CRM_BUDGET", is_user_field=True, source_part="currency"),
    ColumnSpec("kind", ColumnType.TEXT, "UF_CRM_KIND", is_user_field=True),  # enumeration: item ID as text
    ColumnSpec("scan", ColumnType.JSON, "UF_CRM_SCAN", is_user_field=True),  # file
    ColumnSpec("office", ColumnType.JSON, "UF_CRM_OFFICE", is_user_field=True),  # address
))


def legacy(deal_id: str, **values: object) -> dict:
    record = {"ID": deal_id, "TITLE": f"Deal {deal_id}", "OPPORTUNITY": "19999.99",
              "UF_CRM_BUDGET": "100.555|USD", "CLOSED": "N", "BEGINDATE": "2024-05-01T00:00:00+03:00",
              "DATE_CREATE": "2024-05-01T10:00:00+03:00", "DATE_MODIFY": "2024-05-02T10:00:00+02:00",
              "CATEGORY_ID": "0", "UF_CRM_TAGS": ["a", "b"], "UF_CRM_KIND": "45",
              "UF_CRM_SCAN": {"id": 9, "showUrl": "/show/9"}, "UF_CRM_OFFICE": "Lenina 1|55.75;37.61"}
    record.update(values)
    return record


def test_legacy_strings_become_typed_columns() -> None:
    frame = to_frame(DEAL, SCHEMA, [legacy("1"), legacy("2", CLOSED="Y", OPPORTUNITY="", UF_CRM_BUDGET=None,
                                                      BEGINDATE="", DATE_CREATE=None, CATEGORY_ID=None,
                                                      UF_CRM_TAGS=None, TITLE=None)])
    assert list(frame.columns) == ["id", "_source_modified_at", "_raw", "title", "opportunity", "budget",
                                   "closed", "begindate", "date_create", "category_id", "tags",
                                   "budget_currency", "kind", "scan", "office"]
    assert str(frame["id"].dtype) == "int64"
    assert str(frame["_source_modified_at"].dtype) == "datetime64[ns, UTC]"
    first = frame.iloc[0]
    assert first["_source_modified_at"] == pd.Timestamp(datetime(2024, 5, 2, 8, 0, tzinfo=UTC))
    assert first["opportunity"] == pytest.approx(19999.99)
    assert first["budget"] == Decimal("100.56") and first["budget_currency"] == "USD"
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
                      "date_create": "datetime64[ns, UTC]", "category_id": "Int64", "tags": "string",
                      "budget_currency": "string", "kind": "string", "scan": "string", "office": "string"}


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


NULLED, EMPTY, KEPT = "nulled", "empty", "kept"
ODD_VALUES = [
    # (source field, value, column, expected value in the column, how the policy treats it)
    ("TITLE", "Invoice\x00 #1", "title", "Invoice\x00 #1", KEPT),  # the frame keeps text exactly
    ("TITLE", {"ru": "Счёт"}, "title", '{"ru":"Счёт"}', KEPT),
    ("TITLE", ["a", 1], "title", '["a",1]', KEPT),
    ("TITLE", 42, "title", "42", KEPT),
    ("CATEGORY_ID", "9223372036854775808", "category_id", None, NULLED),
    ("CATEGORY_ID", "-9223372036854775809", "category_id", None, NULLED),
    ("CATEGORY_ID", 9223372036854775808, "category_id", None, NULLED),  # crm.item: a JSON number
    ("CATEGORY_ID", 18446744073709551616.0, "category_id", None, NULLED),  # orjson reads >= 2^64 as float
    ("CATEGORY_ID", "9223372036854775807", "category_id", 9223372036854775807, KEPT),
    ("CATEGORY_ID", 9223372036854775807, "category_id", 9223372036854775807, KEPT),
    ("CATEGORY_ID", "abc", "category_id", None, NULLED),
    ("CATEGORY_ID", "1e999999999", "category_id", None, NULLED),  # must not expand a billion digits
    ("CATEGORY_ID", "1e3", "category_id", 1000, KEPT),
    ("CATEGORY_ID", "1.5", "category_id", None, NULLED),
    ("CATEGORY_ID", "1_000", "category_id", None, NULLED),
    ("CATEGORY_ID", " 12 ", "category_id", 12, KEPT),
    ("CATEGORY_ID", ["7"], "category_id", 7, KEPT),  # a list where one value is expected
    ("CATEGORY_ID", [], "category_id", None, EMPTY),
    ("CATEGORY_ID", ["7", "8"], "category_id", None, NULLED),
    ("CATEGORY_ID", {"ID": "5"}, "category_id", None, NULLED),
    ("OPPORTUNITY", "NaN", "opportunity", None, NULLED),
    ("OPPORTUNITY", "inf", "opportunity", None, NULLED),
    ("OPPORTUNITY", "-Infinity", "opportunity", None, NULLED),
    ("OPPORTUNITY", "1e400", "opportunity", None, NULLED),
    ("OPPORTUNITY", "lots", "opportunity", None, NULLED),
    ("OPPORTUNITY", {"sum": 1}, "opportunity", None, NULLED),
    ("OPPORTUNITY", "", "opportunity", None, EMPTY),
    ("OPPORTUNITY", "  ", "opportunity", None, EMPTY),
    ("OPPORTUNITY", 19.5, "opportunity", 19.5, KEPT),
    ("UF_CRM_BUDGET", "|RUB", "budget", None, EMPTY),  # the portal's empty amount
    ("UF_CRM_BUDGET", "|RUB", "budget_currency", "RUB", KEPT),
    ("UF_CRM_BUDGET", "abc|", "budget", None, NULLED),
    ("UF_CRM_BUDGET", "abc|", "budget_currency", None, KEPT),
    ("UF_CRM_BUDGET", "cheap|USD", "budget", None, NULLED),
    ("UF_CRM_BUDGET", "1e20|USD", "budget", None, NULLED),  # beyond DECIMAL(18, 2)
    ("UF_CRM_BUDGET", "NaN|USD", "budget", None, NULLED),
    ("UF_CRM_BUDGET", "100.50|EUR", "budget", Decimal("100.50"), KEPT),
    ("UF_CRM_BUDGET", "100.50|EUR", "budget_currency", "EUR", KEPT),
    ("UF_CRM_BUDGET", "-0.005|EUR", "budget", Decimal("-0.01"), KEPT),
    ("UF_CRM_BUDGET", 250, "budget", Decimal("250.00"), KEPT),
    ("UF_CRM_BUDGET", 250, "budget_currency", None, KEPT),
    ("UF_CRM_BUDGET", {"amount": 1}, "budget", None, NULLED),
    ("BEGINDATE", "", "begindate", None, EMPTY),
    ("BEGINDATE", "0000-00-00", "begindate", None, EMPTY),
    ("BEGINDATE", "0000-00-00 00:00:00", "begindate", None, EMPTY),
    ("BEGINDATE", "0000-00-00T00:00:00+03:00", "begindate", None, EMPTY),
    ("BEGINDATE", "sometime", "begindate", None, NULLED),
    ("BEGINDATE", "2024-02-30", "begindate", None, NULLED),
    ("BEGINDATE", 20240501, "begindate", None, NULLED),
    ("BEGINDATE", "2024-02-29", "begindate", date(2024, 2, 29), KEPT),
    ("DATE_CREATE", "0000-00-00T00:00:00+03:00", "date_create", None, EMPTY),
    ("DATE_CREATE", "0000-00-00 00:00:00", "date_create", None, EMPTY),
    ("DATE_CREATE", "yesterday", "date_create", None, NULLED),
    ("DATE_CREATE", "now", "date_create", None, NULLED),  # pandas alone would read the current time
    ("DATE_CREATE", "today", "date_create", None, NULLED),
    ("DATE_CREATE", "3000-01-01T00:00:00+03:00", "date_create", None, NULLED),  # beyond datetime64[ns]
    ("DATE_CREATE", ["2024-05-01T10:00:00+03:00"], "date_create", pd.Timestamp("2024-05-01T07:00:00Z"), KEPT),
    ("DATE_CREATE", "2024-05-01 10:00:00", "date_create", pd.Timestamp("2024-05-01T10:00:00Z"), KEPT),
    ("CLOSED", "maybe", "closed", None, NULLED),
    ("CLOSED", 2, "closed", None, NULLED),
    ("CLOSED", "", "closed", None, EMPTY),
    ("CLOSED", " y ", "closed", True, KEPT),
    ("CLOSED", 1, "closed", True, KEPT),
    ("CLOSED", "false", "closed", False, KEPT),
    ("UF_CRM_KIND", {"ID": "45", "VALUE": "Retail"}, "kind", '{"ID":"45","VALUE":"Retail"}', KEPT),
    ("UF_CRM_KIND", ["45", "46"], "kind", '["45","46"]', KEPT),
    ("UF_CRM_KIND", False, "kind", "False", KEPT),
    ("UF_CRM_TAGS", "a", "tags", '"a"', KEPT),  # a scalar where a list is expected
    ("UF_CRM_TAGS", False, "tags", "false", KEPT),  # legacy lists print an empty multiple field as false
    ("UF_CRM_TAGS", [{"x": [None]}], "tags", '[{"x":[null]}]', KEPT),
    ("UF_CRM_SCAN", "", "scan", '""', KEPT),
    ("UF_CRM_SCAN", [{"id": 1}, {"id": 2}], "scan", '[{"id":1},{"id":2}]', KEPT),
    ("UF_CRM_OFFICE", {"city": "Kazan"}, "office", '{"city":"Kazan"}', KEPT),
    ("UF_CRM_OFFICE", 7, "office", "7", KEPT),
]


@pytest.mark.parametrize(("source", "value", "column", "expected", "treatment"), ODD_VALUES)
def test_an_odd_value_becomes_its_typed_value_or_a_counted_null_and_the_record_stays(
        source: str, value: object, column: str, expected: object, treatment: str) -> None:
    records = [legacy("1"), legacy("7", **{source: value}), legacy("8")]
    frame, coercions = frame_and_coercions(DEAL, SCHEMA, records)

    assert frame["id"].tolist() == [1, 7, 8]
    cell = frame.iloc[1][column]
    if expected is None:
        assert pd.isna(cell)
    else:
        assert cell == expected
    assert json.loads(frame.iloc[1]["_raw"])[source] == value
    # The neighbours convert as they would alone, whichever path the column took.
    alone = to_frame(DEAL, SCHEMA, [legacy("1")]).iloc[0][column]
    assert frame.iloc[0][column] == alone or (pd.isna(frame.iloc[0][column]) and pd.isna(alone))
    if treatment == NULLED:
        assert coercions.counts == {column: 1}
        assert coercions.examples == {column: [(7, repr(value))]}
    else:
        assert column not in coercions.counts


def test_coercions_are_counted_per_column_with_a_few_examples() -> None:
    records = [legacy(str(i), OPPORTUNITY="NaN", CATEGORY_ID=str(2**63 + i)) for i in range(1, 6)]
    frame, coercions = frame_and_coercions(DEAL, SCHEMA, [*records, legacy("6")])
    assert coercions.counts == {"opportunity": 5, "category_id": 5} and coercions.total == 10
    assert coercions.examples["opportunity"] == [(1, "'NaN'"), (2, "'NaN'"), (3, "'NaN'")]
    assert coercions.examples["category_id"][0] == (1, "'9223372036854775809'")
    assert frame["opportunity"].isna().sum() == 5 and frame.iloc[5]["opportunity"] == pytest.approx(19999.99)


def test_a_long_value_is_cut_in_the_example() -> None:
    _, coercions = frame_and_coercions(DEAL, SCHEMA, [legacy("3", CLOSED="x" * 500)])
    (entity_id, shown), = coercions.examples["closed"]
    assert entity_id == 3 and len(shown) == 60 and shown.startswith("'xxx") and shown.endswith("…")


@pytest.mark.parametrize(("field", "value"), [
    ("ID", "abc"), ("ID", None), ("ID", "9223372036854775808"),
    ("DATE_MODIFY", None), ("DATE_MODIFY", "yesterday"), ("DATE_MODIFY", "0000-00-00 00:00:00"),
])
def test_only_an_unreadable_id_or_modification_time_makes_a_record_malformed(field: str, value: object) -> None:
    with pytest.raises(MalformedRecord) as raised:
        to_frame(DEAL, SCHEMA, [legacy("1"), legacy("7", **{field: value})])
    assert raised.value.column == field


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
