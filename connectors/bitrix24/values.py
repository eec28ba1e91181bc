"""The value policy (DESIGN §3 point 9): every field value becomes its column's type, or NULL, counted.

A portal holds whatever its admins, imports and integrations wrote: ``"NaN"`` in a double field, an
integer beyond int64, ``"abc|"`` in a money field, a dict where a string was declared. One such value
must never block or drop its record, so a value that cannot become its column's type is stored as
NULL, the record's ``_raw`` keeps the original, and `Coercions` counts it per column with a few
examples for the run's metadata and a warning check.

Not every NULL is a failure: the portal's own empty values are NULL and not counted. Those are
``null``, ``""`` (facts §4.3: legacy lists send empty values as ``null`` or ``""``), an empty list, a
money value without an amount (``"|RUB"``: the currency is set, the amount is not) and the zero dates
older portals print (``0000-00-00``, ``0000-00-00 00:00:00``, ``0000-00-00T00:00:00+03:00``).

Shapes, per `ColumnType` (pandas dtypes of the entity frame, see `connectors.bitrix24.frame`):

* INTEGER ``Int64``: JSON integers, integral strings and numbers in int64 range;
* DOUBLE ``float64``: finite numbers only (NaN and infinities are not stored the same way by DuckDB
  and PostgreSQL, so they are NULL and counted);
* DECIMAL ``decimal128(18, 2)``: the amount of ``amount|CUR`` (Bitrix's money user field), rounded half
  away from zero to cents; the currency is its own TEXT column (`currency_column`);
* BOOLEAN ``boolean``: ``Y``/``N``, ``1``/``0``, ``true``/``false`` in any case, JSON booleans and 1/0;
* TIMESTAMP ``datetime64[ns, UTC]``: ISO 8601 (facts §4.7), a value without offset taken as UTC;
* DATE ``date32``: the calendar day as written (first ten characters ``YYYY-MM-DD``);
* TEXT ``string``: strings as sent, other JSON values as JSON text; JSON ``string``: JSON text.

A one-element list where one value is expected is that value (a field switched between single and
multiple keeps its old values in that shape). Conversion is columnar: a column of strings (the legacy
lists) or of one JSON type (crm.item) is converted by Arrow compute kernels (`_columnar`) with the
same rules; a column the kernels cannot take whole (lists, mixed types, a value needing a closer
look) goes through the pandas path, and cell by cell where that one cannot either.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from connectors.tables import ColumnSpec, ColumnType

DECIMAL_TYPE = pa.decimal128(18, 2)
_Column = np.ndarray | pd.api.extensions.ExtensionArray  # one converted column of the entity frame
EXAMPLES = 3  # (id, value) examples kept per column
EXCERPT = 60  # characters of a value shown in an example

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_DECIMAL_LIMIT = Decimal(10) ** 16  # DECIMAL(18, 2) holds 16 digits before the point
_CENT = Decimal("0.01")
_DATE_START = re.compile(r"\d{4}-\d{2}-\d{2}")
_INT64_DIGITS = 18  # adjusted exponent of INT64_MAX (9.2e18): anything larger is out of range
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_ZERO_DATE = "0000-00-00"
_WORDS = {"Y": True, "1": True, "TRUE": True, "N": False, "0": False, "FALSE": False}

CURRENCY = "currency"  # `ColumnSpec.source_part` of a money field's currency column


class _Bad:
    """A value the column cannot take (a sentinel, distinct from None = empty)."""


BAD = _Bad()


@dataclass
class Coercions:
    """Values stored as NULL because they could not become their column's type, per column of a table.

    ``counts`` maps column -> values nulled; ``examples`` column -> up to `EXAMPLES` pairs of
    (entity id, ``repr`` of the value cut to `EXCERPT` characters).
    """

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def record(self, column: str, ids: pd.Series, values: pd.Series, bad: pd.Series | np.ndarray) -> None:
        """Count the cells of ``values`` marked in ``bad`` (aligned boolean mask) for ``column``."""
        bad = np.asarray(bad, dtype=bool)
        count = int(bad.sum())
        if not count:
            return
        self.counts[column] = self.counts.get(column, 0) + count
        kept = self.examples.setdefault(column, [])
        for position in bad.nonzero()[0][:EXAMPLES - len(kept)]:
            kept.append((int(ids.iloc[position]), excerpt(values.iloc[position])))

    def merge(self, other: Coercions) -> None:
        for column, count in other.counts.items():
            self.counts[column] = self.counts.get(column, 0) + count
            kept = self.examples.setdefault(column, [])
            kept.extend(other.examples.get(column, [])[:EXAMPLES - len(kept)])

    def to_json(self) -> dict[str, dict]:
        """``{column: {"count": n, "examples": [[id, excerpt], ...]}}``: the manifests' and metadata's form."""
        return {column: {"count": count, "examples": [list(pair) for pair in self.examples.get(column, [])]}
                for column, count in sorted(self.counts.items())}

    @classmethod
    def from_json(cls, payload: dict[str, dict]) -> Coercions:
        return cls({column: int(entry["count"]) for column, entry in payload.items()},
                   {column: [(int(i), str(text)) for i, text in entry["examples"]]
                    for column, entry in payload.items()})


def excerpt(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= EXCERPT else shown[:EXCERPT - 1] + "…"


def currency_column(name: str) -> str:
    """The TEXT column beside money column ``name`` holding its currency code (``"100.50|USD"`` -> USD)."""
    return f"{name}_currency"


def convert(spec: ColumnSpec, values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """`convert_values` as two series on ``values``' index: the column and the nulled mask."""
    column, bad = convert_values(spec, values)
    if isinstance(column, pd.Series):
        return column, pd.Series(bad, index=values.index, dtype=bool)
    return pd.Series(column, index=values.index, copy=False), pd.Series(bad, index=values.index, dtype=bool)


def convert_values(spec: ColumnSpec, values: pd.Series
                   ) -> tuple[pd.Series | _Column, np.ndarray]:
    """``values`` (one object cell per record; NaN where the record lacks the field) as ``spec``'s column.

    Returns the converted column (same index) and a boolean mask of the cells the policy nulled: not
    empty in the portal's sense, yet not convertible. TEXT and JSON columns take every value.
    """
    columnar = _columnar(spec, values)
    if columnar is not None:
        return columnar
    if spec.source_part == CURRENCY:
        return _currencies(values), _no_bad(len(values))
    if spec.type in (ColumnType.TEXT, ColumnType.JSON):
        return _TEXTUAL[spec.type](values), _no_bad(len(values))
    converted, bad = _typed(spec.type, values)
    return converted, bad.to_numpy(dtype=bool)


# --- columnar fast path ------------------------------------------------------------------------------

_TRUE_WORDS = pa.array([word for word, flag in _WORDS.items() if flag])
_FALSE_WORDS = pa.array([word for word, flag in _WORDS.items() if not flag])
_NUMBER_TEXT = "^" + _NUMBER.pattern + "$"
_KERNEL_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError,
                  ValueError)


def _columnar(spec: ColumnSpec, values: pd.Series
              ) -> tuple[_Column, np.ndarray] | None:
    """`convert` in Arrow kernels for a column of strings or of one native JSON type; None when the
    column needs the cell-aware path (lists, mixed types, a value the kernels reject)."""
    try:
        array = pa.array(values.to_numpy(dtype=object), from_pandas=True)  # NaN (key missing) -> null
    except _KERNEL_ERRORS:
        return None  # mixed types, or an integer beyond int64
    kind = array.type
    if pa.types.is_null(kind):
        array = array.cast(pa.string())
    elif not pa.types.is_string(kind):
        return _native(spec, array)
    if spec.source_part == CURRENCY:
        codes = pc.utf8_trim_whitespace(pc.list_element(pc.split_pattern(
            pc.if_else(pc.match_substring(array, "|"), array, None), "|", max_splits=1), 1))
        return _strings(pc.if_else(pc.equal(codes, ""), None, codes)), _no_bad(len(array))
    if spec.type is ColumnType.TEXT:
        return _strings(array), _no_bad(len(array))
    if spec.type is ColumnType.JSON:
        return None
    direct = _direct(spec.type, array)
    if direct is not None:
        return _to_pandas(spec.type, direct), _no_bad(len(array))
    trimmed = pc.utf8_trim_whitespace(array)
    empty = pc.fill_null(pc.equal(trimmed, ""), True)
    if spec.type in (ColumnType.DATE, ColumnType.TIMESTAMP):
        empty = pc.or_kleene(empty, pc.starts_with(trimmed, _ZERO_DATE))
    elif spec.type is ColumnType.DECIMAL:
        empty = pc.or_kleene(empty, pc.starts_with(trimmed, "|"))
    present = pc.if_else(empty, None, array)
    try:
        converted = _FROM_TEXT[spec.type](present, trimmed)
    except _KERNEL_ERRORS:
        return None
    if converted is None:
        return None
    bad = pc.and_(pc.is_null(converted), pc.invert(empty)).to_numpy(zero_copy_only=False)
    return _to_pandas(spec.type, converted), np.asarray(bad, dtype=bool)


_FLAG_WORDS = pa.array(["Y", "N", "1", "0"])  # what the portal itself writes (facts §4.3, §4.4)
_TRUE_FLAGS = pa.array(["Y", "1"])


def _direct(kind: ColumnType, array: pa.Array) -> pa.Array | None:
    """The column converted in one step when every value is the portal's own clean form (null for
    empty, ``"Y"``/``"N"``, plain numbers, ISO 8601): nothing to trim, empty or count; None otherwise."""
    try:
        if kind is ColumnType.INTEGER:
            return pc.cast(array, pa.int64())
        if kind is ColumnType.DECIMAL:
            wide = pc.cast(array, pa.decimal128(38, 10))
            return pc.cast(pc.round(wide, ndigits=2, round_mode="half_towards_infinity"), DECIMAL_TYPE)
        if kind is ColumnType.TIMESTAMP:
            return pc.cast(array, pa.timestamp("ns", tz="UTC"))
        if kind is ColumnType.DATE:
            return pc.cast(pc.utf8_slice_codeunits(array, 0, 10), pa.date32())
        if kind is ColumnType.BOOLEAN:
            known = pc.is_in(array, _FLAG_WORDS)
            if (pc.sum(known).as_py() or 0) != len(array) - array.null_count:
                return None
            return pc.if_else(pc.is_null(array), None, pc.is_in(array, _TRUE_FLAGS))
    except _KERNEL_ERRORS:
        return None
    return None


def _integers_from_text(present: pa.Array, trimmed: pa.Array) -> pa.Array:
    return pc.cast(present, pa.int64())  # raises on anything but an integral number in range


def _doubles_from_text(present: pa.Array, trimmed: pa.Array) -> pa.Array | None:
    # Only what `_number` reads ("NaN", "inf", " 1_0" are the policy's to judge, cell by cell).
    if pc.all(pc.match_substring_regex(present, _NUMBER_TEXT)).as_py() not in (True, None):
        return None
    numbers = pc.cast(present, pa.float64())
    return None if pc.all(pc.is_finite(numbers)).as_py() not in (True, None) else numbers


def _decimals_from_text(present: pa.Array, trimmed: pa.Array) -> pa.Array:
    amounts = pc.utf8_trim_whitespace(pc.list_element(pc.split_pattern(present, "|", max_splits=1), 0))
    wide = pc.cast(amounts, pa.decimal128(38, 10))  # raises for anything but a plain number
    return pc.cast(pc.round(wide, ndigits=2, round_mode="half_towards_infinity"), DECIMAL_TYPE)


def _booleans_from_text(present: pa.Array, trimmed: pa.Array) -> pa.Array:
    words = pc.utf8_upper(trimmed)
    flags = pc.if_else(pc.is_in(words, _TRUE_WORDS), True, pc.if_else(pc.is_in(words, _FALSE_WORDS), False, None))
    return pc.if_else(pc.is_null(present), None, flags)


def _timestamps_from_text(present: pa.Array, trimmed: pa.Array) -> pa.Array:
    return pc.cast(present, pa.timestamp("ns", tz="UTC"))  # ISO 8601 with offset (facts §4.7)


def _dates_from_text(present: pa.Array, trimmed: pa.Array) -> pa.Array:
    return pc.cast(pc.utf8_slice_codeunits(present, 0, 10), pa.date32())  # the day as written


_FROM_TEXT: dict[ColumnType, Callable[[pa.Array, pa.Array], pa.Array | None]] = {
    ColumnType.INTEGER: _integers_from_text,
    ColumnType.DOUBLE: _doubles_from_text,
    ColumnType.DECIMAL: _decimals_from_text,
    ColumnType.BOOLEAN: _booleans_from_text,
    ColumnType.TIMESTAMP: _timestamps_from_text,
    ColumnType.DATE: _dates_from_text,
}


def _native(spec: ColumnSpec, array: pa.Array) -> tuple[_Column, np.ndarray] | None:
    """crm.item's JSON numbers and booleans where the column takes them as they are."""
    kind, target = array.type, spec.type
    if spec.source_part:
        return None
    if (target is ColumnType.INTEGER and pa.types.is_int64(kind)) or (
            target is ColumnType.BOOLEAN and pa.types.is_boolean(kind)):
        return _to_pandas(target, array), _no_bad(len(array))
    if target is ColumnType.DOUBLE and (pa.types.is_int64(kind) or pa.types.is_float64(kind)):
        numbers = pc.cast(array, pa.float64())
        finite = pc.fill_null(pc.is_finite(numbers), True)
        converted = pc.if_else(finite, numbers, None)
        return _to_pandas(target, converted), pc.invert(finite).to_numpy(zero_copy_only=False)
    return None


def _no_bad(length: int) -> np.ndarray:
    return np.zeros(length, dtype=bool)


def _strings(array: pa.Array) -> pd.api.extensions.ExtensionArray:
    return pd.arrays.ArrowStringArray(array.cast(pa.string()))


def _to_pandas(kind: ColumnType, array: pa.Array) -> _Column:
    """An Arrow array as the entity frame's dtype for ``kind`` (see `connectors.bitrix24.frame`)."""
    if kind is ColumnType.DOUBLE:
        return array.to_numpy(zero_copy_only=False).astype("float64", copy=False)
    if kind in (ColumnType.DECIMAL, ColumnType.DATE):
        return pd.arrays.ArrowExtensionArray(array)
    if kind is ColumnType.TIMESTAMP:
        nanoseconds = pc.cast(array, pa.int64())
        moments = pc.fill_null(nanoseconds, 0).to_numpy(zero_copy_only=False).view("datetime64[ns]")
        if array.null_count:
            moments = np.where(pc.is_null(array).to_numpy(zero_copy_only=False), np.datetime64("NaT"), moments)
        return pd.DatetimeIndex(moments, tz="UTC").array
    mask = pc.is_null(array).to_numpy(zero_copy_only=False)
    if kind is ColumnType.INTEGER:
        return pd.arrays.IntegerArray(pc.fill_null(array, 0).to_numpy(zero_copy_only=False), mask)
    return pd.arrays.BooleanArray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), mask)


# --- scalar columns --------------------------------------------------------------------------------


def _typed(kind: ColumnType, values: pd.Series) -> tuple[pd.Series, pd.Series]:
    cells = values.map(_unwrap, na_action="ignore") if _has_lists(values) else values
    empty = _empty(kind, cells)
    present = cells.mask(empty)
    fast, cellwise, build = _SCALARS[kind]
    try:
        converted = fast(present)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        converted = None
    if converted is None:
        parsed = [None if cell is None else cellwise(cell)
                  for cell in present.to_numpy(dtype=object, na_value=None)]
        bad = pd.Series([cell is BAD for cell in parsed], index=values.index, dtype=bool)
        converted = build([None if cell is BAD else cell for cell in parsed], values.index)
        return converted, bad
    return converted, converted.isna() & ~empty


def _has_lists(values: pd.Series) -> bool:
    return values.dtype == object and any(isinstance(cell, list) for cell in values.to_numpy())


def _unwrap(value: object) -> object:
    if isinstance(value, list) and len(value) <= 1:
        return value[0] if value else None
    return value


def _empty(kind: ColumnType, values: pd.Series) -> pd.Series:
    """The portal's own empty values for a column of ``kind``: NULL, not counted."""
    empty = values.isna()
    if values.dtype != object:
        return empty
    is_text = values.map(lambda cell: isinstance(cell, str)).astype(bool)
    if not is_text.any():
        return empty
    stripped = values.where(is_text, "x").str.strip()
    empty |= stripped.eq("")
    if kind in (ColumnType.DATE, ColumnType.TIMESTAMP):
        empty |= stripped.str.startswith(_ZERO_DATE)
    if kind is ColumnType.DECIMAL:
        empty |= stripped.str.startswith("|")
    return empty


def _fast_integers(values: pd.Series) -> pd.Series | None:
    cells = values.to_numpy(dtype=object, na_value=None)
    kinds = {type(cell) for cell in cells if cell is not None}
    if kinds <= {int}:
        array = pa.array(cells, type=pa.int64())  # OverflowError / ArrowInvalid beyond int64
    elif kinds <= {str}:
        array = pc.cast(pa.array(cells, type=pa.string()), pa.int64())  # ArrowInvalid on anything else
    else:
        return None
    return pd.Series(array.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get), index=values.index,
                     dtype="Int64")


def _integer(value: object) -> int | _Bad:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not value.is_integer():
            return BAD
        number = int(value)
    elif isinstance(value, str) and (parsed := _number(value)) is not None:
        # Range first: int() of "1e999999999" would build a billion-digit number (minutes of CPU).
        if parsed.adjusted() > _INT64_DIGITS or parsed != parsed.to_integral_value():
            return BAD
        number = int(parsed)
    else:
        return BAD
    return number if INT64_MIN <= number <= INT64_MAX else BAD


def _number(text: str) -> Decimal | None:
    """A finite decimal number written as text (no "NaN", "inf", underscores or words), else None."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def _fast_doubles(values: pd.Series) -> pd.Series | None:
    cells = values.to_numpy(dtype=object, na_value=None)
    if not {type(cell) for cell in cells if cell is not None} <= {str, int, float}:
        return None
    numbers = pd.to_numeric(pd.Series(cells, index=values.index, dtype=object), errors="raise").astype("float64")
    if not np.isfinite(numbers.dropna().to_numpy()).all():
        return None
    if any(isinstance(cell, str) and _number(cell) is None for cell in cells):
        return None  # "NaN", "inf", " 1_0": to_numeric reads these, the policy does not
    return numbers


def _double(value: object) -> float | _Bad:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            return BAD
    elif isinstance(value, str) and (parsed := _number(value)) is not None:
        number = float(parsed)
    else:
        return BAD
    return number if math.isfinite(number) else BAD


def _build_doubles(cells: list, index: pd.Index) -> pd.Series:
    return pd.Series([float("nan") if cell is None else cell for cell in cells], index=index, dtype="float64")


def _fast_decimals(values: pd.Series) -> pd.Series | None:
    cells = values.to_numpy(dtype=object, na_value=None)
    kinds = {type(cell) for cell in cells if cell is not None}
    if kinds <= {int, float}:
        # crm.item sends amounts as JSON numbers (facts §4.4): the shortest repr of a float is the
        # number as written ("19999.99"), which the cell-by-cell rule rounds too.
        cells = np.array([None if cell is None else repr(cell) for cell in cells], dtype=object)
    elif not kinds <= {str}:
        return None
    amounts = pc.utf8_trim_whitespace(pc.list_element(pc.split_pattern(pa.array(cells, pa.string()), "|",
                                                                       max_splits=1), 0))
    wide = pc.cast(amounts, pa.decimal128(38, 10))  # ArrowInvalid for anything but a plain number
    rounded = pc.round(wide, ndigits=2, round_mode="half_towards_infinity")
    return pd.Series(pc.cast(rounded, DECIMAL_TYPE), index=values.index, dtype=pd.ArrowDtype(DECIMAL_TYPE))


def _decimal(value: object) -> Decimal | _Bad:
    if isinstance(value, bool):
        return BAD
    if isinstance(value, int | float):
        amount = _number(repr(value)) if isinstance(value, float) else Decimal(value)
    elif isinstance(value, str):
        amount = _number(value.split("|", 1)[0])
    else:
        return BAD
    if amount is None:
        return BAD
    rounded = amount.quantize(_CENT, rounding=ROUND_HALF_UP) if abs(amount) < _DECIMAL_LIMIT else None
    return rounded if rounded is not None and abs(rounded) < _DECIMAL_LIMIT else BAD


def _build_decimals(cells: list, index: pd.Index) -> pd.Series:
    return pd.Series(pa.array(cells, type=DECIMAL_TYPE), index=index, dtype=pd.ArrowDtype(DECIMAL_TYPE))


def _currencies(values: pd.Series) -> pd.Series:
    def currency(value: object) -> object:
        value = _unwrap(value)
        if isinstance(value, str) and "|" in value:
            code = value.split("|", 1)[1].strip()
            return code or None
        return None

    return values.map(currency, na_action="ignore").astype("string")


def _fast_booleans(values: pd.Series) -> pd.Series | None:
    cells = values.to_numpy(dtype=object, na_value=None)
    kinds = {type(cell) for cell in cells if cell is not None}
    if kinds <= {bool}:
        return pd.Series(cells, index=values.index, dtype="boolean")
    if not kinds <= {str}:
        return None
    flags = values.str.strip().str.upper().map(_WORDS)
    if flags.isna().sum() != values.isna().sum():
        return None  # a word the policy does not know: looked at cell by cell
    return flags.astype("boolean")


def _boolean(value: object) -> bool | _Bad:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        flag = _WORDS.get(value.strip().upper())
        if flag is not None:
            return flag
    return BAD


def _build_booleans(cells: list, index: pd.Index) -> pd.Series:
    return pd.Series(cells, index=index, dtype="boolean")


def _fast_timestamps(values: pd.Series) -> pd.Series | None:
    # Arrow parses Bitrix's ISO 8601 with offset (facts §4.7) natively; anything else goes cell by cell.
    text = pa.array(values.to_numpy(dtype=object, na_value=None), type=pa.string())
    parsed = pc.cast(text, pa.timestamp("ns", tz="UTC"))
    return pd.Series(parsed.to_pandas(), index=values.index).astype("datetime64[ns, UTC]")


def _timestamp(value: object) -> pd.Timestamp | _Bad:
    # Only text that starts like a date: pandas reads "now" and "today" as the current time.
    if not isinstance(value, str) or not _DATE_START.match(value.strip()):
        return BAD
    try:
        moment = pd.to_datetime(value.strip(), format="ISO8601", utc=True)
    except (ValueError, OverflowError):
        return BAD
    return BAD if pd.isna(moment) else moment


def _build_timestamps(cells: list, index: pd.Index) -> pd.Series:
    return pd.Series(pd.to_datetime(cells, utc=True), index=index).astype("datetime64[ns, UTC]")


def _fast_dates(values: pd.Series) -> pd.Series | None:
    # The calendar day as written, not shifted to UTC: a birthday stored as 1990-05-01T00:00:00+03:00
    # is the 1st of May (facts §4.7: values carry the server's offset).
    text = pa.array(values.to_numpy(dtype=object, na_value=None), type=pa.string())
    days = pc.cast(pc.utf8_slice_codeunits(text, 0, 10), pa.date32())
    return pd.Series(days, index=values.index, dtype=pd.ArrowDtype(pa.date32()))


def _date(value: object) -> date | _Bad:
    if not isinstance(value, str):
        return BAD
    try:
        return datetime.strptime(value.strip()[:10], "%Y-%m-%d").date()
    except ValueError:
        return BAD


def _build_dates(cells: list, index: pd.Index) -> pd.Series:
    return pd.Series(pa.array(cells, type=pa.date32()), index=index, dtype=pd.ArrowDtype(pa.date32()))


def _build_integers(cells: list, index: pd.Index) -> pd.Series:
    return pd.Series(pa.array(cells, type=pa.int64()).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get),
                     index=index, dtype="Int64")


_Fast = Callable[[pd.Series], "pd.Series | None"]
_Cell = Callable[[object], object]
_Build = Callable[[list, pd.Index], pd.Series]
_SCALARS: dict[ColumnType, tuple[_Fast, _Cell, _Build]] = {
    ColumnType.INTEGER: (_fast_integers, _integer, _build_integers),
    ColumnType.DOUBLE: (_fast_doubles, _double, _build_doubles),
    ColumnType.DECIMAL: (_fast_decimals, _decimal, _build_decimals),
    ColumnType.BOOLEAN: (_fast_booleans, _boolean, _build_booleans),
    ColumnType.TIMESTAMP: (_fast_timestamps, _timestamp, _build_timestamps),
    ColumnType.DATE: (_fast_dates, _date, _build_dates),
}


# --- textual columns -------------------------------------------------------------------------------


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


def _json(values: pd.Series) -> pd.Series:
    return values.map(lambda value: orjson.dumps(value).decode(), na_action="ignore").astype("string")


_TEXTUAL: dict[ColumnType, Callable[[pd.Series], pd.Series]] = {ColumnType.TEXT: _texts, ColumnType.JSON: _json}
