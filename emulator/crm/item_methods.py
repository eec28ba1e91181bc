"""The universal methods: ``crm.item.{fields,list,get,add,update,delete}`` and ``crm.type.{list,get}``.

crm.item works on smart processes and on leads, deals, contacts and companies (entityTypeId 1-4) over
the same stored rows as the legacy methods: camelCase names, native JSON numbers, results wrapped in
``item``/``items``, filters with nested ``logic: OR`` groups, and coded errors such as
``NOT_FOUND`` or ``INVALID_ARG_VALUE`` (facts §4.4).
"""

from __future__ import annotations

from typing import Any

from emulator.crm.fields import InvalidValue, upper_item_name
from emulator.crm.legacy_methods import origin_of
from emulator.crm.phpish import array_values, intval
from emulator.crm.query import Condition, Group, Query, make_condition, run, split_key
from emulator.crm.store import CrmStore, EntityNotFound, InvalidFieldValue, SmartProcess
from emulator.crm.table import EntityTable
from emulator.crm.views import item_field_name, item_view
from emulator.errors import RestError
from emulator.registry import CallContext, Page, param, rest_method


class NotFound(RestError):
    code = "NOT_FOUND"


class InvalidArgValue(RestError):
    code = "INVALID_ARG_VALUE"


def _store(ctx: CallContext) -> CrmStore:
    return ctx.portal.crm


def _table(ctx: CallContext, params: dict[str, Any]) -> EntityTable:
    table = _store(ctx).table_for_type_id(intval(param(params, "entityTypeId")))
    if table is None:
        raise NotFound("SPA not found")
    return table


def _original_uf_names(params: dict[str, Any]) -> bool:
    return str(param(params, "useOriginalUfNames", "N")).upper() == "Y"


def _item_id(params: dict[str, Any], table: EntityTable) -> int:
    entity_id = intval(param(params, "id"))
    if entity_id not in table.rows:
        raise NotFound("Item not found")
    return entity_id


def _field(table: EntityTable, name: str) -> Any:
    """The field a filter or order key names: its camelCase name, or the entity's own UPPER_CASE name
    (``ID``, ``STAGE_ID``, ``UPDATED_TIME``, ``UF_CRM_…``), which the real one accepts as well."""
    spec = table.field_by_camel(name) or table.field_by_upper(name)
    if spec is not None and spec in table.type.explicit_fields:
        return None
    return spec


def _as_group(value: Any) -> dict[str, Any] | None:
    """A nested condition group; PHP arrays with keys 0, 1, ... may arrive decoded as lists."""
    if isinstance(value, dict):
        return value
    if isinstance(value, list) and value and all(isinstance(member, dict) for member in value):
        return {str(index): member for index, member in enumerate(value)}
    return None


def _item_group(table: EntityTable, raw: dict[str, Any], clock: Any) -> Group:
    group = Group(any_of=str(raw.get("logic", "AND")).upper() == "OR")
    for key, value in raw.items():
        if key == "logic":
            continue
        nested = _as_group(value) if str(key).isdigit() or isinstance(value, dict) else None
        if nested is not None:
            group.members.append(_item_group(table, nested, clock))
            continue
        operation, name = split_key(str(key))
        spec = _field(table, name)
        if spec is None:
            raise InvalidArgValue(f"Invalid filter: field '{name}' is not allowed in filter")
        try:
            condition: Condition = make_condition(spec, operation, value, clock, strict=True)
        except InvalidValue:
            raise InvalidArgValue(f"Invalid filter: field '{name}' has invalid value") from None
        group.members.append(condition)
    return group


def item_query(table: EntityTable, raw_filter: Any, raw_order: Any, clock: Any) -> Query:
    if raw_filter in (None, "", []):
        raw_filter = {}
    grouped = _as_group(raw_filter)
    if grouped is None:
        raise InvalidArgValue("Invalid filter: filter must be an array")
    where = _item_group(table, grouped, clock)
    if raw_order in (None, "", []):
        raw_order = {}
    if not isinstance(raw_order, dict):
        raise InvalidArgValue("Invalid order: order must be an array")
    order = []
    for name, direction in raw_order.items():
        spec = _field(table, str(name))
        if spec is None:
            raise InvalidArgValue(f"Invalid order: field '{name}' is not allowed in order")
        if str(direction).upper() not in ("ASC", "DESC"):
            raise InvalidArgValue("Invalid order: allowed sort directions are ASC, DESC. "
                                  f"But got '{direction}' for field '{name}'")
        order.append((spec, str(direction).upper() == "DESC"))
    return Query(where, order or [(table.field("ID"), False)])


@rest_method("crm.item.list", scope="crm")
def item_list(ctx: CallContext, params: dict) -> Page:
    table = _table(ctx, params)
    original = _original_uf_names(params)
    query = item_query(table, param(params, "filter"), param(params, "order"), _store(ctx).clock)
    page = run(table, query, intval(param(params, "start", 0)))
    render = item_view(table, array_values(param(params, "select")), original)
    return Page({"items": [render(entity_id) for entity_id in page.ids]}, total=page.total, next=page.next)


@rest_method("crm.item.get", scope="crm")
def item_get(ctx: CallContext, params: dict) -> dict[str, Any]:
    table = _table(ctx, params)
    entity_id = _item_id(params, table)
    return {"item": item_view(table, None, _original_uf_names(params))(entity_id)}


@rest_method("crm.item.fields", scope="crm")
def item_fields(ctx: CallContext, params: dict) -> dict[str, Any]:
    table = _table(ctx, params)
    original = _original_uf_names(params)
    described = {}
    for spec in table.row_fields:
        entry = spec.describe()
        if entry["type"] == "char":
            entry["type"] = "boolean"
        entry["title"] = spec.title or spec.name
        entry["upperName"] = upper_item_name(spec.camel)
        described[item_field_name(spec, original)] = entry
    return {"fields": described}


def _item_fields(params: dict[str, Any]) -> dict[str, Any]:
    fields = param(params, "fields", {})
    if isinstance(fields, list) and not fields:
        return {}
    if not isinstance(fields, dict):
        raise InvalidArgValue("Invalid value for parameter 'fields'")
    return fields


@rest_method("crm.item.add", scope="crm")
def item_add(ctx: CallContext, params: dict) -> dict[str, Any]:
    table = _table(ctx, params)
    try:
        entity_id = _store(ctx).add(table.type.key, _item_fields(params), origin_of(ctx))
    except InvalidFieldValue as error:
        raise InvalidArgValue(f"Invalid value for field '{error.field_name}'") from None
    return {"item": item_view(table, None, _original_uf_names(params))(entity_id)}


@rest_method("crm.item.update", scope="crm")
def item_update(ctx: CallContext, params: dict) -> dict[str, Any]:
    table = _table(ctx, params)
    entity_id = _item_id(params, table)
    try:
        _store(ctx).update(table.type.key, entity_id, _item_fields(params), origin_of(ctx))
    except EntityNotFound:
        raise NotFound("Item not found") from None
    except InvalidFieldValue as error:
        raise InvalidArgValue(f"Invalid value for field '{error.field_name}'") from None
    return {"item": item_view(table, None, _original_uf_names(params))(entity_id)}


@rest_method("crm.item.delete", scope="crm")
def item_delete(ctx: CallContext, params: dict) -> list[Any]:
    table = _table(ctx, params)
    entity_id = _item_id(params, table)
    _store(ctx).delete(table.type.key, entity_id, origin_of(ctx))
    return []


def _type_row(store: CrmStore, smart_process: SmartProcess) -> dict[str, Any]:
    created = store.clock.iso_uncached(smart_process.created)
    return {
        "id": smart_process.id,
        "title": smart_process.title,
        "code": None,
        "createdBy": 1,
        "entityTypeId": smart_process.entity_type_id,
        "customSectionId": None,
        "isCategoriesEnabled": "Y",
        "isStagesEnabled": "Y",
        "isBeginCloseDatesEnabled": "Y",
        "isClientEnabled": "Y",
        "isUseInUserfieldEnabled": "Y",
        "isLinkWithProductsEnabled": "Y",
        "isMycompanyEnabled": "Y",
        "isDocumentsEnabled": "Y",
        "isSourceEnabled": "Y",
        "isObserversEnabled": "Y",
        "isRecyclebinEnabled": "Y",
        "isAutomationEnabled": "Y",
        "isBizProcEnabled": "Y",
        "isSetOpenPermissions": "Y",
        "isPaymentsEnabled": "N",
        "isCountersEnabled": "N",
        "createdTime": created,
        "updatedTime": created,
        "updatedBy": 1,
    }


@rest_method("crm.type.list", scope="crm")
def type_list(ctx: CallContext, params: dict) -> Page:
    store = _store(ctx)
    types = [_type_row(store, smart_process) for smart_process in store.smart_processes.values()]
    start = max(intval(param(params, "start", 0)), 0)
    page = types[start:start + 50]
    more = start + len(page) < len(types)
    return Page({"types": page}, total=len(types), next=start + 50 if more else None)


@rest_method("crm.type.get", scope="crm")
def type_get(ctx: CallContext, params: dict) -> dict[str, Any]:
    store = _store(ctx)
    wanted = intval(param(params, "id"))
    for smart_process in store.smart_processes.values():
        if smart_process.id == wanted:
            return {"type": _type_row(store, smart_process)}
    raise NotFound("SPA not found")
