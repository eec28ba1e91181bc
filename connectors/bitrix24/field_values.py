"""Field values as Bitrix24 holds them: when a warehouse value and a portal value are the same, and
how a value is written in ``fields[...]``.

Legacy lists answer every value as a string ("37.50", "Y", "1", "" for empty), crm.item lists answer
numbers and booleans (facts §4.3-§4.4), and a warehouse query gives floats, Decimals, Timestamps and
NULL/NaN. Comparing in the field's `ColumnType` keeps a write-back from rewriting an unchanged value
on every run, or from missing a real change.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import pandas as pd

from connectors.tables import ColumnType

__all__ = ["plain", "same_value", "wire_value"]


def same_value(wanted: Any, stored: Any, column_type: ColumnType) -> bool:
    """Equal as Bitrix24 values of the field's type: legacy lists answer strings ("37.50", "Y", "1"),
    crm.item numbers and booleans (facts §4.3-§4.4); empty, null and NaN are all "no value"."""
    return _canonical(wanted, column_type) == _canonical(stored, column_type)


def _canonical(value: Any, column_type: ColumnType) -> Any:
    value = plain(value)
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, list | tuple):
        items = [_canonical(item, column_type) for item in value]
        return tuple(item for item in items if item is not None) or None
    if column_type in (ColumnType.INTEGER, ColumnType.DOUBLE, ColumnType.DECIMAL):
        amount, _, currency = str(value).partition("|")  # money: "100.50|USD" (facts §4.5)
        try:
            number = Decimal(amount.strip()).normalize()
        except InvalidOperation:
            return str(value)
        return (number, currency) if currency else number
    if column_type is ColumnType.BOOLEAN:
        if isinstance(value, bool):
            return value
        return str(value).strip().lower() in ("y", "1", "true", "yes")
    if column_type is ColumnType.TIMESTAMP:
        moment = _moment(value)
        return moment if moment is not None else str(value)
    if column_type is ColumnType.DATE:
        # Legacy dates may come as "2025-05-01T00:00:00+03:00": the day is the first ten characters.
        return (value.isoformat() if isinstance(value, date) else str(value))[:10]
    return str(value)


def _moment(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def plain(value: Any) -> Any:
    """numpy / pandas scalars as Python values (a query frame's cells)."""
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def wire_value(value: Any, column_type: ColumnType | None = None) -> Any:
    """A value as sent in ``fields[...]`` of a field of ``column_type`` (None: by the value alone):
    empty string for null (clears the field), ISO 8601 times with their offset, a date field's day
    alone, a list for a multiple field.

    * A time without a zone is taken as UTC and sent with ``+00:00``, as `same_value` compares it:
      sent bare, the portal would read it in its server zone (facts §4.7) and the value
      stored would differ from the one asked for by that offset.
    * An empty list (or one of empties only) is sent as ``""``: a batch command is a PHP query
      string, where an empty array has no parameter at all, so ``[]`` would leave the field as it
      was instead of clearing it (`connectors.bitrix24.batch.encode_query`).
    * A date field gets its day: a query's DATE often arrives as a midnight timestamp, which sent
      with ``+00:00`` would be stored as the day before on a portal west of UTC.
    * A time given as text is parsed like a time value, so one without a zone is sent as UTC too."""
    value = plain(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column_type is ColumnType.DATE and isinstance(value, date):
        return (value.date() if isinstance(value, datetime) else value).isoformat()
    if column_type is ColumnType.TIMESTAMP and isinstance(value, str):
        moment = _moment(value)
        return moment.isoformat() if moment is not None else value
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list | tuple):
        items = [wire_value(item, column_type) for item in value]
        return [item for item in items if item != ""] or ""
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)
