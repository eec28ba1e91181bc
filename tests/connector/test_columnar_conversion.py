"""The columnar conversion (Arrow kernels over a whole column) gives exactly the value policy's answer.

`connectors.bitrix24.values` converts a column of strings or of one JSON type in Arrow kernels and
keeps the pandas and cell-by-cell path for the rest. Both must agree value for value and on which
cells were nulled: here every column type meets the portal's clean values and a mix of odd ones
(spaces, empties, zero dates, words, out-of-range numbers, exponents), in columns that are clean
throughout (the one-step path) and dirty (the full kernel path), compared with the reference path.
"""

from __future__ import annotations

import random

import pandas as pd
import pytest

from connectors.bitrix24 import values as policy
from connectors.tables import ColumnSpec, ColumnType

CLEAN = {
    ColumnType.INTEGER: ["0", "17", "-5", "9223372036854775807", None],
    ColumnType.DOUBLE: ["0.5", "19999.99", "-3", "1e5", None],
    ColumnType.DECIMAL: ["19999.99", "0.00", "2.675", "-2.675", "100.555|USD", None],
    ColumnType.BOOLEAN: ["Y", "N", "1", "0", None],
    ColumnType.TIMESTAMP: ["2024-06-26T11:56:30+03:00", "2024-01-01T00:00:00+00:00", None],
    ColumnType.DATE: ["2025-02-07T00:00:00+03:00", "1990-05-01", None],
}
ODD = {
    ColumnType.INTEGER: ["", "  ", " 7 ", "1.0", "1.5", "abc", "9223372036854775808", "1e3", "+4", "007"],
    ColumnType.DOUBLE: ["", " ", "NaN", "inf", "-Infinity", "1e400", "lots", " 2.5 ", "1_0", ".5", "1."],
    ColumnType.DECIMAL: ["", "|RUB", " 12.345 |EUR", "abc|", "1e3", "12345678901234567.00", ".5",
                         "9999999999999999.995"],
    ColumnType.BOOLEAN: ["", " y ", "true", "FALSE", "yes", "2", "Д"],
    ColumnType.TIMESTAMP: ["", "0000-00-00 00:00:00", "0000-00-00T00:00:00+03:00", "yesterday", "2024-13-01T00:00:00",
                           "2024-06-26 11:56:30", "now"],
    ColumnType.DATE: ["", "0000-00-00", "2024-02-30", "01.05.1990", " 2024-05-01"],
}

# Odd values the kernels judge themselves (the rest send the column to the reference path).
KERNEL_ODD = {
    ColumnType.INTEGER: ["", "  "],
    ColumnType.DOUBLE: ["", " "],
    ColumnType.DECIMAL: ["", "|RUB", " 12.345 |EUR"],
    ColumnType.BOOLEAN: ["", " y ", "true", "FALSE", "yes", "2"],
    ColumnType.TIMESTAMP: ["", "0000-00-00 00:00:00", "0000-00-00T00:00:00+03:00"],
    ColumnType.DATE: ["", "0000-00-00"],
}


def reference(spec: ColumnSpec, values: pd.Series) -> tuple[list, list]:
    """The pandas / cell-by-cell path, which the columnar one replaces where it can."""
    converted, bad = policy._typed(spec.type, values)
    return _plain(converted), bad.tolist()


def _plain(column: pd.Series) -> list:
    return [None if pd.isna(value) else value for value in column.tolist()]


@pytest.mark.parametrize("kind", list(CLEAN))
@pytest.mark.parametrize("odd", [{}, KERNEL_ODD, ODD], ids=["clean", "kernel-odd", "odd"])
def test_the_columnar_path_gives_the_policys_values_and_counts(kind: ColumnType, odd: dict) -> None:
    spec = ColumnSpec("field", kind, "FIELD")
    pool = CLEAN[kind] + odd.get(kind, [])
    rng = random.Random(7)
    cells = pd.Series([rng.choice(pool) for _ in range(400)] + pool, dtype=object)

    converted, bad = policy.convert(spec, cells)

    if odd is not ODD:  # these the kernels take whole; the others may go the reference way
        assert policy._columnar(spec, cells) is not None

    assert (_plain(converted), bad.tolist()) == reference(spec, cells)
    assert str(converted.dtype) == str(policy._typed(kind, cells.iloc[:0])[0].dtype)


def test_a_missing_key_is_null_and_not_counted() -> None:
    spec = ColumnSpec("field", ColumnType.INTEGER, "FIELD")
    converted, bad = policy.convert(spec, pd.Series(["1", float("nan"), None], dtype=object))
    assert _plain(converted) == [1, None, None] and bad.tolist() == [False, False, False]


@pytest.mark.parametrize(("kind", "cells"), [
    (ColumnType.INTEGER, [1, 2, None]),
    (ColumnType.DOUBLE, [1, 2.5, None]),
    (ColumnType.BOOLEAN, [True, False, None]),
    (ColumnType.DECIMAL, [19000, 19999.99, 2.675, None]),
])
def test_crm_item_json_values_match_the_policy(kind: ColumnType, cells: list) -> None:
    spec = ColumnSpec("field", kind, "field")
    values = pd.Series(cells, dtype=object)
    converted, bad = policy.convert(spec, values)
    assert (_plain(converted), bad.tolist()) == reference(spec, values)
