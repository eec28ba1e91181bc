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
