"""The offline event queue (``b_rest_event_offline``) and the ``event.offline.*`` methods that drain it.

One `OfflineQueue` per (application, connector) (facts §2.12). A queue keeps one row per merge key
(MESSAGE_ID, PROCESS_ID): a repeated change refreshes the unreserved row's TIMESTAMP_X, data and
author, while a change to an object whose row is reserved inserts a new row, so nothing is lost when
the reserved batch is cleared (§2.11). Reservation, re-read, clear and the error lane follow the rest
module's source step by step (§2.7-§2.10).

Queues can hold 100,000+ rows, so unreserved rows are also kept in a list sorted by
(TIMESTAMP_X, ID) per error lane: the default ``get`` takes rows off its front without scanning.
"""

from __future__ import annotations

import secrets
import string
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any

from emulator.crm.clock import PortalClock
from emulator.crm.phpish import array_values, intval, lower_keys
from emulator.errors import AccessDenied, ArgumentError, WrongLicense
from emulator.registry import CallContext, Page, rest_method

PAGE_SIZE = 50
DEFAULT_GET_LIMIT = 50
EXTENDED_MODE_FEATURE = "rest_offline_extended"

GET_FIELDS = ("ID", "TIMESTAMP_X", "EVENT_NAME", "MESSAGE_ID")
LIST_FIELDS = (*GET_FIELDS, "PROCESS_ID", "ERROR")
FILTER_OPERATIONS = ("", "=", ">", "<", ">=", "<=", "@", "%")

_PROCESS_ID_ALPHABET = string.ascii_lowercase + string.digits


class OfflineRow:
    __slots__ = ("additional", "data", "error", "event_name", "id", "message_id", "process_id", "timestamp")

    def __init__(self, row_id: int, timestamp: int, event_name: str, data: Any, additional: Any,
                 message_id: str) -> None:
        self.id = row_id
        self.timestamp = timestamp  # epoch seconds: TIMESTAMP_X is a DATETIME column
        self.event_name = event_name
        self.data = data
        self.additional = additional
        self.message_id = message_id
        self.process_id = ""
        self.error = 0

    def value(self, column: str) -> Any:
        """A column as filters and orders compare it."""
        if column == "ID":
            return self.id
        if column == "TIMESTAMP_X":
            return self.timestamp
        if column == "EVENT_NAME":
            return self.event_name.upper()
        if column == "MESSAGE_ID":
            return self.message_id.upper()
        if column == "PROCESS_ID":
            return self.process_id.upper()
        return self.error


RowTest = Callable[[OfflineRow], bool]
Order = list[tuple[str, bool]]  # (column, descending)


class OfflineQueue:
    """The rows of one application and connector."""

    def __init__(self, client_id: str, connector: str, clock: PortalClock) -> None:
        self.client_id = client_id
        self.connector = connector
        self.clock = clock
        self.rows: dict[int, OfflineRow] = {}  # by ID; ids only grow, so this is ID order
        # Unreserved rows as sorted (TIMESTAMP_X, ID) keys, one list per ERROR value.
        self._lanes: dict[int, list[tuple[int, int]]] = {0: [], 1: []}
        self._unreserved: dict[str, OfflineRow] = {}  # MESSAGE_ID -> the row with PROCESS_ID ''
        self._processes: dict[str, dict[int, OfflineRow]] = {}  # PROCESS_ID -> its rows in reservation order
        self._by_message: dict[str, dict[int, OfflineRow]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    # --- bookkeeping ------------------------------------------------------------------------------

    def _lane_add(self, row: OfflineRow) -> None:
        lane = self._lanes[row.error]
        key = (row.timestamp, row.id)
        if not lane or key > lane[-1]:
            lane.append(key)
        else:
            insort(lane, key)

    def _lane_remove(self, row: OfflineRow) -> None:
        lane = self._lanes[row.error]
        del lane[bisect_left(lane, (row.timestamp, row.id))]

    def _forget(self, row: OfflineRow) -> None:
        del self.rows[row.id]
        copies = self._by_message[row.message_id]
        del copies[row.id]
        if not copies:
            del self._by_message[row.message_id]
        if row.process_id:
            members = self._processes[row.process_id]
            del members[row.id]
            if not members:
                del self._processes[row.process_id]
        else:
            self._lane_remove(row)
            del self._unreserved[row.message_id]

    def _move_to_error_lane(self, row: OfflineRow) -> None:
        """ERROR=1 and PROCESS_ID '': the row leaves its reservation and waits in the error lane."""
        if row.process_id:
            members = self._processes[row.process_id]
            del members[row.id]
            if not members:
                del self._processes[row.process_id]
            row.process_id = ""
            self._unreserved[row.message_id] = row
        else:
            self._lane_remove(row)
        row.error = 1
        self._lane_add(row)

    # --- writing ------------------------------------------------------------------------------------

    def record(self, new_id: Callable[[], int], event_name: str, data: Any, additional: Any, message_id: str,
               timestamp: int) -> OfflineRow:
        """One occurrence: ``INSERT ... ON DUPLICATE KEY UPDATE`` on (MESSAGE_ID, PROCESS_ID='').

        The update touches TIMESTAMP_X, EVENT_DATA and EVENT_ADDITIONAL only; ERROR is kept, so an
        object in the error lane stays there (§2.10)."""
        row = self._unreserved.get(message_id)
        if row is not None:
            if row.timestamp != timestamp:
                self._lane_remove(row)
                row.timestamp = timestamp
                self._lane_add(row)
            row.data = data
            row.additional = additional
            return row
        row = OfflineRow(new_id(), timestamp, event_name, data, additional, message_id)
        self.rows[row.id] = row
        self._unreserved[message_id] = row
        self._by_message.setdefault(message_id, {})[row.id] = row
        self._lane_add(row)
        return row

    # --- reading ------------------------------------------------------------------------------------

    def reserve(self, process_id: str, test: RowTest | None, order: Order | None, limit: int,
                error: int) -> None:
        """``UPDATE ... SET PROCESS_ID=<new> WHERE <filter> AND PROCESS_ID='' ORDER BY <order> LIMIT n``."""
        lane = self._lanes[error]
        by_time = order is not None and len(order) == 1 and order[0][0] == "TIMESTAMP_X"
        if by_time and test is None and not order[0][1]:
            keys = lane[:limit]
            del lane[:limit]
            chosen = [self.rows[row_id] for _, row_id in keys]
        else:
            if by_time:
                keys_in_order = reversed(lane) if order[0][1] else iter(lane)
                candidates = (self.rows[row_id] for _, row_id in keys_in_order)
                chosen = list(islice((row for row in candidates if test is None or test(row)), limit))
            else:
                matching = [self.rows[row_id] for _, row_id in lane]
                matching = [row for row in matching if test is None or test(row)]
                chosen = sort_rows(matching, order)[:limit]
            for row in chosen:
                self._lane_remove(row)
        members = self._processes.setdefault(process_id, {})
        for row in chosen:
            del self._unreserved[row.message_id]
            row.process_id = process_id
            members[row.id] = row
        if not members:
            del self._processes[process_id]

    def rows_of_process(self, process_id: str) -> list[OfflineRow]:
        # PROCESS_ID '' is a legal value in the SQL: it selects every unreserved row.
        if process_id == "":
            return sorted(self._unreserved.values(), key=lambda row: row.id)
        return list(self._processes.get(process_id, {}).values())

    def select(self, process_id: str, test: RowTest | None, order: Order | None, limit: int,
               error: int) -> list[OfflineRow]:
        rows = [row for row in self.rows_of_process(process_id)
                if row.error == error and (test is None or test(row))]
        return sort_rows(rows, order)[:limit]

    def all_rows(self) -> Iterable[OfflineRow]:
        return self.rows.values()

    # --- acknowledging ------------------------------------------------------------------------------

    def clear(self, process_id: str, ids: list[int] | None = None,
              message_ids: list[str] | None = None) -> int:
        """``DELETE ... WHERE PROCESS_ID=<id> [AND ID IN (...)] [AND MESSAGE_ID IN (...)]``."""
        doomed = self.rows_of_process(process_id)
        if ids is not None:
            wanted = set(ids)
            doomed = [row for row in doomed if row.id in wanted]
        if message_ids is not None:
            wanted_messages = set(message_ids)
            doomed = [row for row in doomed if row.message_id in wanted_messages]
        for row in doomed:
            self._forget(row)
        return len(doomed)

    def mark_error(self, process_id: str, message_ids: list[str], *, lane_rows_too: bool = False) -> None:
        """``markError`` of rest 25.x, for the given messages of this queue:

        1. delete non-error copies outside this process (e.g. a fresh row queued after reservation);
        2. the process's own copies get ERROR=1 and leave the reservation (PROCESS_ID '');
        3. any other unreserved error copy is dropped, leaving one error row per message.

        Whether step 2 also applies to copies that already have ERROR=1 (reserved by a ``get error=1``
        drain) is not settled (facts §2.10): ``lane_rows_too`` chooses the reading."""
        for message_id in dict.fromkeys(message_ids):
            copies = list(self._by_message.get(message_id, {}).values())
            for row in copies:
                if row.error == 0 and row.process_id != process_id:
                    self._forget(row)
            for row in copies:
                if row.id not in self.rows or row.process_id != process_id or (row.error != 0 and not lane_rows_too):
                    continue
                previous = self._unreserved.get(message_id)
                if previous is not None and previous is not row:
                    self._forget(previous)
                self._move_to_error_lane(row)

    # --- views ----------------------------------------------------------------------------------------

    def event(self, row: OfflineRow) -> dict[str, Any]:
        """An ``event.offline.get`` element: exactly six keys (§2.7)."""
        return {
            "ID": str(row.id),
            "TIMESTAMP_X": self.clock.iso_uncached(row.timestamp),
            "EVENT_NAME": row.event_name,
            "EVENT_DATA": row.data,
            "EVENT_ADDITIONAL": row.additional,
            "MESSAGE_ID": row.message_id,
        }

    def listed(self, row: OfflineRow) -> dict[str, Any]:
        """An ``event.offline.list`` row: the six keys plus PROCESS_ID and ERROR (§2.8)."""
        return {**self.event(row), "PROCESS_ID": row.process_id, "ERROR": str(row.error)}


def sort_rows(rows: list[OfflineRow], order: Order | None) -> list[OfflineRow]:
    ordered = sorted(rows, key=lambda row: row.id)  # the table's natural order breaks ties
    for column, descending in reversed(order or []):
        ordered.sort(key=lambda row, column=column: row.value(column), reverse=descending)
    return ordered


def new_process_id() -> str:
    """32 random characters, like ``Main\\Security\\Random::getString(32)``."""
    return "".join(secrets.choice(_PROCESS_ID_ALPHABET) for _ in range(32))


# --- parameter sanitizing (IRestService::sanitizeFilter / sanitizeOrder) -------------------------------

@dataclass
class _Condition:
    column: str
    operation: str
    operand: Any


def _split(key: str) -> tuple[str, str]:
    position = 0
    while position < len(key) and not key[position].isalpha():
        position += 1
    return key[:position], key[position:]


def parse_filter(raw: Any, allowed: tuple[str, ...], clock: PortalClock, *,
                 scalars_only: bool) -> RowTest | None:
    if raw is None:
        return None
    if not isinstance(raw, dict | list):
        raise ArgumentError("The filter is not an array.")
    items = raw.items() if isinstance(raw, dict) else enumerate(raw)
    conditions = []
    for key, value in items:
        upper_key = str(key).upper()
        operation, column = _split(upper_key)
        if operation not in FILTER_OPERATIONS:
            raise ArgumentError(f"Filter operation not allowed: {operation}")
        if column not in allowed:
            raise ArgumentError(f"Filter field not allowed: {column}")
        if scalars_only and isinstance(value, list | dict):
            # rest 25.x markEvents refuses array values (ArgumentTypeException), so no IN-lists in get.
            raise ArgumentError(f"The value of an argument '{upper_key}' has an invalid type")
        conditions.append(_condition(column, operation, value, clock))
    if not conditions:
        return None
    tests = [_test(condition) for condition in conditions]
    return lambda row: all(test(row) for test in tests)


def _operand(column: str, value: Any, clock: PortalClock) -> Any:
    if column in ("ID", "ERROR"):
        return intval(value)
    if column == "TIMESTAMP_X":
        return clock.parse(value)
    return str(value).upper()


def _condition(column: str, operation: str, value: Any, clock: PortalClock) -> _Condition:
    if operation == "%":
        return _Condition(column, operation, str(value).upper())
    values = array_values(value)
    if values is not None:
        return _Condition(column, "@", frozenset(_operand(column, item, clock) for item in values))
    operand = _operand(column, value, clock)
    if operation == "@":
        return _Condition(column, "@", frozenset({operand}))
    return _Condition(column, operation or "=", operand)


def _test(condition: _Condition) -> RowTest:
    column, operation, operand = condition.column, condition.operation, condition.operand
    if operand is None:
        return lambda row: False  # an unparseable TIMESTAMP_X matches nothing
    if operation == "=":
        return lambda row: row.value(column) == operand
    if operation == "@":
        return lambda row: row.value(column) in operand
    if operation == "%":
        return lambda row: operand in str(row.value(column))
    if operation == ">":
        return lambda row: row.value(column) > operand
    if operation == ">=":
        return lambda row: row.value(column) >= operand
    if operation == "<":
        return lambda row: row.value(column) < operand
    return lambda row: row.value(column) <= operand


def parse_order(raw: Any, allowed: tuple[str, ...]) -> Order:
    if not isinstance(raw, dict | list):
        raise ArgumentError("The order is not an array.")
    items = raw.items() if isinstance(raw, dict) else enumerate(raw)
    order: Order = []
    for key, value in items:
        if isinstance(key, int) or str(key).isdigit():
            column, direction = str(value).upper(), "ASC"
        else:
            column, direction = str(key).upper(), str(value).upper()
        if column not in allowed:
            raise ArgumentError(f"Order field not allowed: {column}")
        if direction not in ("ASC", "DESC"):
            raise ArgumentError("Order direction should be one of {ASC|DESC}")
        order.append((column, direction == "DESC"))
    return order


# --- REST methods -----------------------------------------------------------------------------------------

def _queue(ctx: CallContext) -> OfflineQueue:
    # Reading an unknown connector's queue must not leave an empty queue behind.
    return ctx.portal.events.queue(ctx.caller.client_id or "", ctx.caller.auth_connector, create=False)


def _require_admin(ctx: CallContext) -> None:
    if not ctx.caller.is_admin:
        raise AccessDenied()


def _process_id(query: dict[str, Any]) -> str | None:
    value = query.get("process_id")
    return None if value is None else str(value).strip()


@rest_method("event.offline.get", scope="basic", app_only=True)
def event_offline_get(ctx: CallContext, params: dict) -> dict[str, Any]:
    _require_admin(ctx)
    query = lower_keys(params)
    clear = 1 if "clear" not in query else intval(query["clear"])
    process_id = _process_id(query)
    if not clear and EXTENDED_MODE_FEATURE not in ctx.portal.features:
        raise WrongLicense("extended offline events handling")
    limit = intval(query["limit"]) if "limit" in query else DEFAULT_GET_LIMIT
    read_errors = "error" in query and intval(query["error"]) == 1
    if limit <= 0:
        raise ArgumentError("Value must be positive integer", "LIMIT")
    clock = ctx.portal.events.clock
    test = parse_filter(query.get("filter", {}), GET_FIELDS, clock, scalars_only=process_id is None)
    order = parse_order(query.get("order", {"TIMESTAMP_X": "ASC"}), GET_FIELDS)
    queue = _queue(ctx)
    error = 1 if read_errors else 0
    return_process_id = not clear
    if process_id is None:
        process_id = new_process_id()
        queue.reserve(process_id, test, order, limit, error)
    else:
        return_process_id = True
    rows = queue.select(process_id, test, order, limit, error)
    events = [queue.event(row) for row in rows]
    if clear and rows:
        # Clearing deletes every row of the process, also those the limit left out of the answer.
        queue.clear(process_id)
    return {"process_id": process_id if return_process_id else None, "events": events}


@rest_method("event.offline.list", scope="basic", app_only=True)
def event_offline_list(ctx: CallContext, params: dict) -> Page:
    _require_admin(ctx)
    query = lower_keys(params)
    clock = ctx.portal.events.clock
    test = parse_filter(query.get("filter", {}), LIST_FIELDS, clock, scalars_only=False)
    order = parse_order(query.get("order", {"ID": "ASC"}), LIST_FIELDS)
    # getNavData(-1) drops the offset but the count query still runs, and setNavData computes
    # next = offset + rows: so start=-1 pages exactly like start=0 here (rest module source).
    offset = max(intval(query.get("start", 0)), 0)
    queue = _queue(ctx)
    if not order or order == [("ID", False)]:
        matching: Iterable[OfflineRow] = (row for row in queue.all_rows() if test is None or test(row))
    elif order == [("ID", True)]:
        matching = (row for row in reversed(queue.rows.values()) if test is None or test(row))
    else:
        matching = sort_rows([row for row in queue.all_rows() if test is None or test(row)], order)
    if test is None and not isinstance(matching, list):
        total = len(queue)
        page = list(islice(matching, offset, offset + PAGE_SIZE))
    else:
        page, total = [], 0
        for row in matching:
            if offset <= total < offset + PAGE_SIZE:
                page.append(row)
            total += 1
    items = [queue.listed(row) for row in page]
    more = offset + len(items) < total
    return Page(items, total=total, next=offset + len(items) if more else None)


@rest_method("event.offline.clear", scope="basic", app_only=True)
def event_offline_clear(ctx: CallContext, params: dict) -> bool:
    _require_admin(ctx)
    query = lower_keys(params)
    process_id = _process_id(query)
    if not process_id:
        # Empty counts as missing (facts §2.9); it must never select the unreserved rows.
        raise ArgumentError("Argument 'PROCESS_ID' is null or empty", "PROCESS_ID")
    queue = _queue(ctx)
    # The source checks message_id first and then ignores id (facts §10.4).
    if "message_id" in query:
        values = array_values(query["message_id"])
        if values is None:
            raise ArgumentError("Value must be array of MESSAGE_ID values", "message_id")
        message_ids = [str(value).strip() for value in values]
        if any(len(message_id) != 32 for message_id in message_ids):
            # The source spells this argument with three s.
            raise ArgumentError("Value must be array of MESSAGE_ID values", "messsage_id")
        queue.clear(process_id, message_ids=message_ids)
        return True
    ids = None
    if "id" in query:
        values = array_values(query["id"])
        if values is None:
            raise ArgumentError("Value must be array of integers", "id")
        ids = [intval(value) for value in values]
        if any(row_id <= 0 for row_id in ids):
            raise ArgumentError("Value must be array of integers", "id")
    queue.clear(process_id, ids=ids)
    return True


@rest_method("event.offline.error", scope="basic", app_only=True)
def event_offline_error(ctx: CallContext, params: dict) -> bool:
    _require_admin(ctx)
    query = lower_keys(params)
    process_id = _process_id(query)
    if process_id is None:
        raise ArgumentError("Argument 'PROCESS_ID' is null or empty", "PROCESS_ID")
    values = array_values(query.get("message_id"))
    if values is None:
        raise ArgumentError("Value must be array of MESSAGE_ID values", "message_id")
    if values:
        _queue(ctx).mark_error(process_id, [str(value) for value in values],
                               lane_rows_too=ctx.portal.error_unreserves_lane_rows)
    return True

