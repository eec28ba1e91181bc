"""Reference-data methods: ``user.get``, ``department.get``, ``crm.status.list``,
``crm.status.entity.types``, ``crm.category.list``, ``crm.currency.list`` and ``crm.stagehistory.list``.

Shapes follow facts §4.8 and the b24restdocs pages it cites: the legacy methods answer strings in a
plain list, ``crm.category.list`` answers the crm.item style (``{"categories": [...]}``, camelCase),
``crm.stagehistory.list`` wraps its rows in ``items`` with native numbers. Lists page by 50 with
``total``/``next`` (facts §4.1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from emulator.crm.phpish import array_values, intval
from emulator.crm.query import PAGE_SIZE, split_key
from emulator.crm.reference import DEAL_TYPE_ID, DICTIONARIES, LEAD_TYPE_ID, POSITIONS
from emulator.crm.store import CrmStore
from emulator.errors import RestError
from emulator.registry import CallContext, Page, param, rest_method


class InvalidArgValue(RestError):
    code = "INVALID_ARG_VALUE"


class EntityTypeNotSupported(RestError):
    code = "ENTITY_TYPE_NOT_SUPPORTED"


def _store(ctx: CallContext) -> CrmStore:
    return ctx.portal.crm


def _page(rows: list[Any], start: int, wrap: Callable[[list[Any]], Any] = lambda rows: rows) -> Page:
    """One page of 50 from ``start``; ``start < 0`` returns the first 50 without counting (facts §4.1)."""
    if start < 0:
        return Page(wrap(rows[:PAGE_SIZE]))
    start = start // PAGE_SIZE * PAGE_SIZE
    page = rows[start:start + PAGE_SIZE]
    more = start + len(page) < len(rows)
    return Page(wrap(page), total=len(rows), next=start + PAGE_SIZE if more else None)


def _flag(value: Any) -> bool | None:
    if value in (None, ""):
        return None
    if isinstance(value, bool):
        return value
    return str(value).strip().upper() in ("Y", "1", "TRUE")


def _as_list(value: Any) -> list[str]:
    values = array_values(value) if isinstance(value, dict | list) else [value]
    return [str(item) for item in values or []]


# --- user.get / department.get ----------------------------------------------------------------------

def _user_row(ctx: CallContext, user: Any) -> dict[str, Any]:
    first, _, last = user.name.partition(" ")
    return {
        "ID": str(user.id), "XML_ID": None, "ACTIVE": user.active, "NAME": first, "LAST_NAME": last,
        "SECOND_NAME": "", "EMAIL": f"{first}.{last}".lower().strip(".") + "@example.com",
        "LAST_LOGIN": None, "DATE_REGISTER": "2023-01-10T09:00:00+03:00", "IS_ONLINE": "N",
        "TIME_ZONE": "", "TIME_ZONE_OFFSET": "10800", "PERSONAL_GENDER": "",
        "WORK_POSITION": user.position or POSITIONS.get(user.id, "Sales manager"),
        "UF_DEPARTMENT": list(user.departments), "USER_TYPE": "employee",
    }


@rest_method("user.get", scope="user")
def user_get(ctx: CallContext, params: dict) -> Page:
    """Filter keys may sit at the top level or under ``FILTER`` ([D] api-reference/user/user-get.md)."""
    raw_filter = param(params, "filter") or {}
    if not isinstance(raw_filter, dict):
        raw_filter = {}
    wanted = {str(key).upper(): value for key, value in params.items()
              if str(key).upper() in ("ID", "ACTIVE", "UF_DEPARTMENT", "NAME", "LAST_NAME", "EMAIL")}
    wanted.update({str(key).upper(): value for key, value in raw_filter.items()})
    users = sorted(ctx.portal.users.values(), key=lambda user: user.id)
    rows = [_user_row(ctx, user) for user in users]
    for key, value in wanted.items():
        if key == "ACTIVE":
            active = _flag(value)
            rows = [row for row in rows if active is None or row["ACTIVE"] is active]
        elif key == "UF_DEPARTMENT":
            departments = {intval(item) for item in _as_list(value)}
            rows = [row for row in rows if departments & set(row["UF_DEPARTMENT"])]
        elif key in ("ID", "NAME", "LAST_NAME", "EMAIL"):
            accepted = set(_as_list(value))
            rows = [row for row in rows if row[key] in accepted]
    return _page(rows, intval(param(params, "start", 0)))


@rest_method("department.get", scope="department")
def department_get(ctx: CallContext, params: dict) -> Page:
    """[D] api-reference/departments/department-get.md: ``ID``, ``NAME``, ``SORT``, ``PARENT``, ``UF_HEAD``."""
    departments = sorted(_store(ctx).reference.departments.values(), key=lambda d: (d.sort, d.id))
    rows: list[dict[str, Any]] = []
    for department in departments:
        row: dict[str, Any] = {"ID": str(department.id), "NAME": department.name, "SORT": department.sort}
        if department.parent is not None:
            row["PARENT"] = str(department.parent)
        if department.head is not None:
            row["UF_HEAD"] = str(department.head)
        rows.append(row)
    for key in ("ID", "NAME", "PARENT", "UF_HEAD"):
        value = param(params, key)
        if value not in (None, ""):
            accepted = set(_as_list(value))
            rows = [row for row in rows if row.get(key) in accepted]
    return _page(rows, intval(param(params, "start", 0)))


# --- crm.status.* / crm.category.list / crm.currency.list ------------------------------------------

@rest_method("crm.status.list", scope="crm")
def status_list(ctx: CallContext, params: dict) -> Page:
    """Every dictionary in one list; legacy filter (unknown fields ignored) and order (facts §4.8)."""
    rows = _store(ctx).reference.status_rows()
    raw_filter = param(params, "filter") or {}
    for key, value in (raw_filter.items() if isinstance(raw_filter, dict) else ()):
        operation, name = split_key(str(key))
        name = name.upper()
        if rows and name in rows[0]:
            accepted = set(_as_list(value))
            keep = operation in ("", "=", "@")
            rows = [row for row in rows if (str(row[name]) in accepted) is keep]
    order = param(params, "order") or {}
    if isinstance(order, dict):
        for name, direction in reversed(list(order.items())):
            key = str(name).upper()
            numeric = key in ("ID", "SORT")
            rows.sort(key=lambda row, key=key, numeric=numeric: intval(row.get(key)) if numeric
                      else str(row.get(key) or ""), reverse=str(direction).upper() == "DESC")
    return Page(rows, total=len(rows))


@rest_method("crm.status.entity.types", scope="crm")
def status_entity_types(ctx: CallContext, params: dict) -> list[dict[str, Any]]:
    names = {"STATUS": "Lead statuses", "SOURCE": "Sources", "CONTACT_TYPE": "Contact types",
             "COMPANY_TYPE": "Company types", "INDUSTRY": "Industries", "EMPLOYEES": "Employees",
             "DEAL_TYPE": "Deal types"}
    rows = [{"ID": key, "NAME": names.get(key, key)} for key in ("STATUS", *DICTIONARIES)]
    store = _store(ctx)
    for pipeline in sorted(store.reference.pipelines.values(), key=lambda p: (p.entity_type_id, p.id)):
        owner = ("Deals" if pipeline.entity_type_id == DEAL_TYPE_ID
                 else store.smart_processes[pipeline.entity_type_id].title)
        rows.append({"ID": pipeline.status_entity_id(), "NAME": f"{owner} stages ({pipeline.name})",
                     "SEMANTIC_INFO": {}, "CATEGORY_ID": pipeline.id, "ENTITY_TYPE_ID": pipeline.entity_type_id})
    return rows


@rest_method("crm.category.list", scope="crm")
def category_list(ctx: CallContext, params: dict) -> Page:
    """Pipelines of deals (entityTypeId 2) or of a smart process; crm.item style (facts §4.8)."""
    store = _store(ctx)
    entity_type_id = intval(param(params, "entityTypeId"))
    if entity_type_id != DEAL_TYPE_ID and entity_type_id not in store.smart_processes:
        raise RestError(f"Entity type {entity_type_id} is not supported", code="NOT_FOUND")
    rows = [{"id": pipeline.id, "name": pipeline.name, "sort": pipeline.sort, "entityTypeId": entity_type_id,
             "isDefault": "Y" if pipeline.is_default else "N"}
            for pipeline in store.reference.categories(entity_type_id)]
    return _page(rows, intval(param(params, "start", 0)), lambda page: {"categories": page})


@rest_method("crm.currency.list", scope="crm")
def currency_list(ctx: CallContext, params: dict) -> Page:
    """[D] api-reference/crm/currency/crm-currency-list.md; sorted by SORT unless ``order`` says otherwise."""
    currencies = sorted(_store(ctx).reference.currencies, key=lambda currency: (currency.sort, currency.code))
    rows = [{
        "CURRENCY": currency.code, "AMOUNT_CNT": 1, "AMOUNT": currency.amount, "SORT": str(currency.sort),
        "BASE": "Y" if currency.base else "N", "FULL_NAME": currency.name, "LID": "en",
        "FORMAT_STRING": currency.format_string, "DEC_POINT": ".", "THOUSANDS_SEP": ",", "DECIMALS": "2",
        "DATE_UPDATE": "2024-01-01T00:00:00+03:00",
    } for currency in currencies]
    return Page(rows, total=len(rows))


# --- crm.stagehistory.list ----------------------------------------------------------------------------

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "": lambda a, b: a == b, "=": lambda a, b: a == b, "!=": lambda a, b: a != b, "!": lambda a, b: a != b,
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
}
_NUMERIC = frozenset({"ID", "TYPE_ID", "OWNER_ID", "CATEGORY_ID"})


def _history_view(entity_type_id: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    if entity_type_id != LEAD_TYPE_ID:
        return dict
    # Leads report their status, not a stage, and have no pipeline ([D] crm-stage-history-list.md).
    return lambda row: {"ID": row["ID"], "TYPE_ID": row["TYPE_ID"], "OWNER_ID": row["OWNER_ID"],
                        "CREATED_TIME": row["CREATED_TIME"], "STATUS_SEMANTIC_ID": row["STAGE_SEMANTIC_ID"],
                        "STATUS_ID": row["STAGE_ID"]}


@rest_method("crm.stagehistory.list", scope="crm")
def stage_history_list(ctx: CallContext, params: dict) -> Page:
    store = _store(ctx)
    entity_type_id = intval(param(params, "entityTypeId"))
    if entity_type_id not in (LEAD_TYPE_ID, DEAL_TYPE_ID) and entity_type_id not in store.smart_processes:
        raise EntityTypeNotSupported(f"Entity type {entity_type_id} is not supported")
    view = _history_view(entity_type_id)
    history = store.reference.history(entity_type_id)
    with ctx.portal.lock:
        rows = [view(row) for row in history.rows]
    fields = set(rows[0]) if rows else set(view({"ID": 0, "TYPE_ID": 0, "OWNER_ID": 0, "CREATED_TIME": "",
                                                 "CATEGORY_ID": 0, "STAGE_SEMANTIC_ID": "", "STAGE_ID": ""}))
    raw_filter = param(params, "filter") or {}
    if not isinstance(raw_filter, dict):
        raise InvalidArgValue("Invalid filter: filter must be an array")
    for key, value in raw_filter.items():
        operation, name = split_key(str(key))
        if name not in fields or (operation not in _COMPARE and operation != "@"):
            raise InvalidArgValue(f"Invalid filter: field '{name}' is not allowed in filter")
        convert = (lambda item: intval(item)) if name in _NUMERIC else str
        if isinstance(value, dict | list) or operation == "@":
            accepted = {convert(item) for item in _as_list(value)}
            rows = [row for row in rows if convert(row[name]) in accepted]
            continue
        compare, target = _COMPARE[operation], convert(value)
        rows = [row for row in rows if row[name] is not None and compare(convert(row[name]), target)]
    order = param(params, "order") or {}
    if not isinstance(order, dict):
        raise InvalidArgValue("Invalid order: order must be an array")
    for name, direction in reversed(list(order.items())):
        if name not in fields:
            raise InvalidArgValue(f"Invalid order: field '{name}' is not allowed in order")
        if str(direction).upper() not in ("ASC", "DESC"):
            raise InvalidArgValue(f"Invalid order: allowed sort directions are ASC, DESC. But got '{direction}' "
                                  f"for field '{name}'")
        rows.sort(key=lambda row, name=name: (row[name] is None, row[name]), reverse=str(direction).upper() == "DESC")
    select = [str(name) for name in array_values(param(params, "select")) or [] if str(name) in fields]
    if select and "*" not in select:
        rows = [{name: row[name] for name in select} for row in rows]
    return _page(rows, intval(param(params, "start", 0)), lambda page: {"items": page})
