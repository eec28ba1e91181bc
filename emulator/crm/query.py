"""Filters, sort orders and 50-row pages over an `EntityTable`, shared by legacy lists and crm.item.list.

Filter keys carry an operation prefix before the field name (facts §4.2): ``>=``, ``>``, ``<=``,
``<``, ``@`` (IN), ``!@`` (NOT IN), ``%`` (substring LIKE), ``=%``/``%=`` (LIKE with explicit
``%``), ``!%``/``!=%``/``!%=`` (NOT LIKE), ``=`` (default), ``!=``/``!`` (not equal).

Speed matters because the connector pages through large tables: an ``ID``/``@ID`` condition becomes a
dict lookup, an ``ID`` range a bisect on the sorted id list, and with the default ``ID`` order a
``start=-1`` page stops after 50 matches instead of sorting the table.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from emulator.crm.clock import PortalClock
from emulator.crm.fields import Field, InvalidValue, Kind
from emulator.crm.table import EntityTable

PAGE_SIZE = 50

_OPERATION = re.compile(r"^(!@|!=%|!%=|!%|!=|=%|%=|>=|<=|@|>|<|=|%|!)?(.*)$", re.DOTALL)
_CANONICAL_OPERATION = {None: "=", "!": "!=", "%=": "=%", "!%=": "!=%"}

RowTest = Callable[[dict[str, Any]], bool]


class UnknownField(LookupError):
    """A filter or order names a field the entity does not have."""


class BadFilterValue(ValueError):
    """A filter value that cannot be compared with the field (strict crm.item parsing only)."""


def split_key(key: str) -> tuple[str, str]:
    """``">=DATE_MODIFY"`` -> (``">="``, ``"DATE_MODIFY"``)."""
    match = _OPERATION.match(key)
    assert match is not None  # the pattern matches every string
    operation = match.group(1)
    return _CANONICAL_OPERATION.get(operation, operation), match.group(2)


@dataclass
class Condition:
    spec: Field
    operation: str
    operand: Any  # normalised with the field's sort key; a tuple for IN / NOT IN; None for IS NULL


@dataclass
class Group:
    any_of: bool = False  # "logic": "OR"
    members: list[Condition | Group] = field(default_factory=list)


@dataclass
class Query:
    where: Group
    order: list[tuple[Field, bool]]  # (field, descending)


# --- value normalisation ------------------------------------------------------------------------

def sort_key(spec: Field) -> Callable[[Any], Any]:
    """How stored values of `spec` compare: numbers as numbers, text case-insensitively (MySQL ci
    collation), timestamps as their portal-format strings (same offset everywhere, so lexical order
    is chronological)."""
    if spec.kind is Kind.INT:
        return int
    if spec.kind is Kind.FLOAT:
        return float
    if spec.kind in (Kind.FLAG, Kind.UF_FLAG):
        return str.upper
    if spec.kind in (Kind.DATETIME, Kind.DATE):
        return str
    return str.casefold


def _operand(spec: Field, value: Any, clock: PortalClock) -> Any:
    kind = spec.kind
    if kind is Kind.INT:
        if isinstance(value, bool):
            return int(value)
        try:
            return int(float(str(value).strip()))
        except ValueError as exc:
            raise InvalidValue(str(value)) from exc
    if kind is Kind.FLOAT:
        try:
            return float(str(value).strip())
        except ValueError as exc:
            raise InvalidValue(str(value)) from exc
    if kind is Kind.FLAG:
        if isinstance(value, bool | int):
            return "Y" if value else "N"
        return str(value).upper()
    if kind is Kind.UF_FLAG:
        if isinstance(value, bool):
            return "1" if value else "0"
        return str(value).upper()
    if kind is Kind.DATETIME:
        text = clock.normalize(value)
        if text is None:
            raise InvalidValue(str(value))
        return text
    if kind is Kind.DATE:
        text = clock.normalize_day(value)
        if text is None:
            raise InvalidValue(str(value))
        return text
    return str(value).casefold()


def _lenient_operand(spec: Field, value: Any, clock: PortalClock) -> Any:
    """Legacy methods do not reject odd values: numbers go through PHP intval/floatval (-> 0)."""
    try:
        return _operand(spec, value, clock)
    except InvalidValue:
        if spec.kind is Kind.INT:
            return 0
        if spec.kind is Kind.FLOAT:
            return 0.0
        return _NEVER


class _Never:
    """An operand nothing compares equal, less or greater to (an unparseable legacy date)."""


_NEVER = _Never()


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value is False or value == []


def make_condition(spec: Field, operation: str, value: Any, clock: PortalClock, *, strict: bool) -> Condition:
    normalise = _operand if strict else _lenient_operand
    if operation in ("@", "!@") or (operation in ("=", "!=") and isinstance(value, list | tuple)):
        values = value if isinstance(value, list | tuple) else [value]
        operand: Any = tuple(normalise(spec, item, clock) for item in values if not _is_empty(item))
        operation = "@" if operation in ("@", "=") else "!@"
    elif operation in ("=", "!=") and _is_empty(value):
        operand = None  # IS NULL / IS NOT NULL
    elif operation in ("%", "!%"):
        operand = str(value).casefold()
    elif operation in ("=%", "!=%"):
        operand = _like_pattern(str(value))
    else:
        operand = normalise(spec, value, clock)
    return Condition(spec, operation, operand)


def _like_pattern(pattern: str) -> re.Pattern[str]:
    parts = []
    for char in pattern:
        if char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


# --- evaluation -----------------------------------------------------------------------------------

def _getter(table: EntityTable, spec: Field) -> Callable[[dict[str, Any]], Any]:
    name = spec.name
    if any(name == explicit.name for explicit in table.type.explicit_fields):
        extras = table.extras

        def explicit_values(row: dict[str, Any]) -> list[str]:
            entries = extras.get(int(row["ID"]), {}).get(name) or []
            return [entry.get("VALUE") for entry in entries if isinstance(entry, dict)]

        return explicit_values
    return lambda row: row.get(name)


def _compare(operation: str, key: Callable[[Any], Any], operand: Any) -> Callable[[Any], bool]:
    if isinstance(operand, _Never):
        return lambda value: False
    if operation == "=":
        return lambda value: key(value) == operand
    if operation == "!=":
        return lambda value: key(value) != operand
    if operation == ">":
        return lambda value: key(value) > operand
    if operation == ">=":
        return lambda value: key(value) >= operand
    if operation == "<":
        return lambda value: key(value) < operand
    if operation == "<=":
        return lambda value: key(value) <= operand
    if operation == "@":
        members = frozenset(item for item in operand if not isinstance(item, _Never))
        return lambda value: key(value) in members
    if operation == "!@":
        members = frozenset(item for item in operand if not isinstance(item, _Never))
        return lambda value: key(value) not in members
    if operation == "%":
        return lambda value: operand in str(value).casefold()
    if operation == "!%":
        return lambda value: operand not in str(value).casefold()
    if operation == "=%":
        return lambda value: operand.fullmatch(str(value)) is not None
    if operation == "!=%":
        return lambda value: operand.fullmatch(str(value)) is None
    raise ValueError(f"unknown filter operation {operation!r}")


_NEGATIVE = frozenset({"!=", "!@", "!%", "!=%"})


def _condition_test(table: EntityTable, condition: Condition) -> RowTest:
    get = _getter(table, condition.spec)
    operation = condition.operation
    if condition.operand is None and operation in ("=", "!="):
        if operation == "=":
            return lambda row: _is_empty(get(row))
        return lambda row: not _is_empty(get(row))
    compare = _compare(operation, sort_key(condition.spec), condition.operand)
    negative = operation in _NEGATIVE

    def test(row: dict[str, Any]) -> bool:
        value = get(row)
        if value is None or value == "":
            # SQL comparisons with NULL are false; NOT IN / NOT LIKE keep empty rows (Bitrix adds
            # "OR field IS NULL" to negative conditions).
            return negative
        if isinstance(value, list):
            if not value:
                return negative
            if negative:
                return all(compare(item) for item in value)
            return any(compare(item) for item in value)
        return compare(value)

    return test


def _group_test(table: EntityTable, group: Group) -> RowTest | None:
    tests = [
        _condition_test(table, member) if isinstance(member, Condition) else _group_test(table, member)
        for member in group.members
    ]
    tests = [test for test in tests if test is not None]
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]
    if group.any_of:
        return lambda row: any(test(row) for test in tests)
    return lambda row: all(test(row) for test in tests)


# --- planning -------------------------------------------------------------------------------------

def _candidate_ids(table: EntityTable, where: Group) -> tuple[list[int] | range | None, Group]:
    """Ids that can satisfy the top-level ID conditions, and the conditions still to test per row.

    Returns ``None`` when the ID conditions leave every row possible."""
    if where.any_of:
        return None, where
    exact: set[int] | None = None
    low, high = None, None  # inclusive bounds
    rest = Group(members=[])
    for member in where.members:
        if not (isinstance(member, Condition) and member.spec.name == "ID"):
            rest.members.append(member)
            continue
        operand, operation = member.operand, member.operation
        if isinstance(operand, _Never):
            return [], rest
        if operation == "=" and operand is not None:
            exact = {operand} if exact is None else exact & {operand}
        elif operation == "@":
            values = {value for value in operand if isinstance(value, int)}
            exact = values if exact is None else exact & values
        elif operation in (">", ">="):
            bound = operand + 1 if operation == ">" else operand
            low = bound if low is None else max(low, bound)
        elif operation in ("<", "<="):
            bound = operand - 1 if operation == "<" else operand
            high = bound if high is None else min(high, bound)
        else:
            rest.members.append(member)
    if exact is not None:
        rows = table.rows
        chosen = sorted(
            entity_id for entity_id in exact
            if entity_id in rows and (low is None or entity_id >= low) and (high is None or entity_id <= high)
        )
        return chosen, rest
    if low is None and high is None:
        return None, rest
    ids = table.ids
    first = 0 if low is None else bisect_left(ids, low)
    last = len(ids) if high is None else bisect_right(ids, high)
    return _IdSlice(ids, first, last), rest


class _IdSlice:
    """A window of the sorted id list without copying it."""

    def __init__(self, ids: list[int], first: int, last: int) -> None:
        self.ids, self.first, self.last = ids, first, max(first, last)

    def __len__(self) -> int:
        return self.last - self.first

    def __iter__(self) -> Iterator[int]:
        ids = self.ids
        return (ids[index] for index in range(self.first, self.last))

    def __reversed__(self) -> Iterator[int]:
        ids = self.ids
        return (ids[index] for index in range(self.last - 1, self.first - 1, -1))

    def window(self, offset: int, count: int, descending: bool) -> list[int]:
        if descending:
            stop = self.last - offset
            return self.ids[max(self.first, stop - count):max(self.first, stop)][::-1]
        begin = self.first + offset
        return self.ids[begin:min(self.last, begin + count)]


@dataclass
class PageOfIds:
    ids: list[int]
    total: int | None
    next: int | None


def run(table: EntityTable, query: Query, start: int) -> PageOfIds:
    """Evaluate `query`; ``start=-1`` means no offset and no count (facts §4.1)."""
    count_total = start >= 0
    offset = max(start, 0)
    candidates, rest = _candidate_ids(table, query.where)
    test = _group_test(table, rest)
    order = query.order
    id_order = not order or (len(order) == 1 and order[0][0].name == "ID")
    descending = bool(order) and order[0][1]
    rows = table.rows

    if id_order:
        source: Any = candidates if candidates is not None else _IdSlice(table.ids, 0, len(table.ids))
        if test is None:
            if isinstance(source, _IdSlice):
                page = source.window(offset, PAGE_SIZE, descending)
            else:
                ordered = source[::-1] if descending else source
                page = ordered[offset:offset + PAGE_SIZE]
            return _page(page, len(source) if count_total else None, offset)
        stream: Iterable[int] = reversed(source) if descending else iter(source)
        matches = (entity_id for entity_id in stream if test(rows[entity_id]))
        if not count_total:
            return _page(list(islice(matches, PAGE_SIZE)), None, offset)
        page, total = [], 0
        for entity_id in matches:
            if offset <= total < offset + PAGE_SIZE:
                page.append(entity_id)
            total += 1
        return _page(page, total, offset)

    source = candidates if candidates is not None else table.ids
    matched = [entity_id for entity_id in source if test is None or test(rows[entity_id])]
    for spec, desc in reversed(order):
        matched.sort(key=_row_sort_key(table, spec), reverse=desc)
    return _page(matched[offset:offset + PAGE_SIZE], len(matched) if count_total else None, offset)


def _row_sort_key(table: EntityTable, spec: Field) -> Callable[[int], Any]:
    get = _getter(table, spec)
    key = sort_key(spec)
    rows = table.rows

    def row_key(entity_id: int) -> tuple[Any, ...]:
        value = get(rows[entity_id])
        if isinstance(value, list):
            value = value[0] if value else None
        # MySQL puts NULLs first in ascending order.
        return (0, 0) if value is None or value == "" else (1, key(value))

    return row_key


def _page(ids: list[int], total: int | None, offset: int) -> PageOfIds:
    has_more = total is not None and offset + len(ids) < total
    return PageOfIds(ids, total, offset + PAGE_SIZE if has_more else None)
