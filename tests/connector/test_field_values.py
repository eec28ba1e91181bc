"""When a warehouse value and a portal value are the same field value (pure), for the write-back.

Legacy lists answer every value as a string ("37.50", "Y", "1"), crm.item lists answer numbers and
booleans (facts §4.3-§4.4), while a warehouse query gives floats, Decimals, Timestamps and NULL/NaN.
A false "changed" would rewrite every object on every run; a false "same" would never push.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from connectors.bitrix24.batch import encode_query
from connectors.bitrix24.field_values import same_value, wire_value
from connectors.tables import ColumnType


@pytest.mark.parametrize(("wanted", "stored", "column_type"), [
    (37.5, "37.50", ColumnType.DOUBLE),
    (Decimal("37.50"), 37.5, ColumnType.DOUBLE),
    (np.float64(12.0), "12", ColumnType.INTEGER),
    ("100.5|USD", "100.50|USD", ColumnType.DECIMAL),
    (True, "Y", ColumnType.BOOLEAN),
    (np.bool_(False), "0", ColumnType.BOOLEAN),
    (None, "", ColumnType.TEXT),
    (float("nan"), None, ColumnType.DOUBLE),
    (pd.NA, "", ColumnType.TEXT),
    (pd.Timestamp("2025-05-01T07:00:00Z"), "2025-05-01T10:00:00+03:00", ColumnType.TIMESTAMP),
    (date(2025, 5, 1), "2025-05-01", ColumnType.DATE),
    (["a", "b"], ["a", "b"], ColumnType.JSON),
    ("Hot lead", "Hot lead", ColumnType.TEXT),
])
def test_values_equal_in_the_fields_type_are_the_same(wanted, stored, column_type) -> None:
    assert same_value(wanted, stored, column_type)


@pytest.mark.parametrize(("wanted", "stored", "column_type"), [
    (37.5, "37.51", ColumnType.DOUBLE),
    (0, None, ColumnType.DOUBLE),  # zero is a value, not "empty"
    ("100.50|EUR", "100.50|USD", ColumnType.DECIMAL),
    (False, "Y", ColumnType.BOOLEAN),
    ("", "Hot lead", ColumnType.TEXT),  # NULL clears the field
    (pd.Timestamp("2025-05-01T07:00:01Z"), "2025-05-01T10:00:00+03:00", ColumnType.TIMESTAMP),
    ("n/a", None, ColumnType.DOUBLE),
])
def test_different_values_are_a_change(wanted, stored, column_type) -> None:
    assert not same_value(wanted, stored, column_type)


def test_wire_values_clear_with_an_empty_string_and_write_times_in_iso_8601() -> None:
    assert wire_value(None) == "" and wire_value(float("nan")) == "" and wire_value(pd.NaT) == ""
    assert wire_value(np.int64(5)) == 5 and wire_value(Decimal("1.50")) == "1.50"
    assert wire_value(datetime(2025, 5, 1, 7, tzinfo=UTC)) == "2025-05-01T07:00:00+00:00"
    assert wire_value(pd.Timestamp("2025-05-01T07:00:00Z")) == "2025-05-01T07:00:00+00:00"
    assert wire_value(np.array([1, 2])) == [1, 2]


def test_a_time_without_a_zone_is_sent_as_utc_like_it_is_compared() -> None:
    """Sent bare, the portal would read "07:00" in its server zone (facts §4.7); comparison takes it
    as UTC, so the write must say so or every run would push it again."""
    naive = datetime(2025, 5, 1, 7, 0)
    assert wire_value(naive) == "2025-05-01T07:00:00+00:00"
    assert wire_value(pd.Timestamp("2025-05-01T07:00:00")) == "2025-05-01T07:00:00+00:00"
    assert same_value(naive, "2025-05-01T10:00:00+03:00", ColumnType.TIMESTAMP)


@pytest.mark.parametrize("empty", [[], (), [None], np.array([], dtype=object), [float("nan"), None]])
def test_an_empty_list_clears_a_multiple_field_with_an_empty_string(empty) -> None:
    """In a batch command (a PHP query string) an empty array has no parameter at all, so ``[]``
    would leave the field as it was; ``""`` clears it."""
    assert wire_value(empty) == ""
    assert encode_query({"fields": {"UF_CRM_TAGS": wire_value(empty)}}) == "fields[UF_CRM_TAGS]="
    assert wire_value(["a", None, "b"]) == ["a", "b"]


def test_a_date_field_gets_its_day_and_a_time_as_text_is_sent_with_its_zone() -> None:
    """A query's DATE arrives as a midnight timestamp; sent as UTC midnight, a portal west of UTC
    would store the day before. A zone-less time given as text is UTC like any other."""
    midnight = pd.Timestamp("2025-05-01T00:00:00")
    assert wire_value(midnight, ColumnType.DATE) == "2025-05-01"
    assert wire_value(date(2025, 5, 1), ColumnType.DATE) == "2025-05-01"
    assert wire_value([midnight, None], ColumnType.DATE) == ["2025-05-01"]
    assert wire_value("2025-05-01T10:00:00", ColumnType.TIMESTAMP) == "2025-05-01T10:00:00+00:00"
    assert wire_value("2025-05-01T10:00:00+03:00", ColumnType.TIMESTAMP) == "2025-05-01T07:00:00+00:00"
    assert wire_value("soon", ColumnType.TIMESTAMP) == "soon"  # the portal refuses it, reported per row
    assert wire_value(midnight) == "2025-05-01T00:00:00+00:00"  # a time field: UTC
