"""The legacy CRM methods: ``crm.{deal,contact,company,lead,activity}.{fields,list,get,add,update,delete}``
and ``crm.{deal,contact,company,lead}.userfield.{add,list,get,delete}``.

Registered once per entity type from `entities.LEGACY_TYPES`. Values are strings, empty values
``null``; errors are HTTP 400 with an empty ``error`` code and a text such as ``Not found``
(facts §4.3).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from emulator.crm.entities import LEGACY_TYPES, EntityType
from emulator.crm.origin import Origin
from emulator.crm.phpish import array_values, intval, upper_keys
from emulator.crm.query import PAGE_SIZE, Group, Query, make_condition, run, split_key
from emulator.crm.store import CrmStore, EntityNotFound, InvalidFieldValue
from emulator.crm.table import EntityTable
from emulator.crm.userfields import UserFieldError
from emulator.crm.views import legacy_view
from emulator.errors import LegacyCrmError
from emulator.registry import CallContext, Page, param, rest_method


def origin_of(ctx: CallContext) -> Origin:
    caller = ctx.caller
    return Origin(user_id=caller.user_id, client_id=caller.client_id, auth_connector=caller.auth_connector)


def _store(ctx: CallContext) -> CrmStore:
    return ctx.portal.crm


def _table(ctx: CallContext, entity_type: EntityType) -> EntityTable:
    return _store(ctx).table(entity_type.key)


def _entity_id(params: dict[str, Any]) -> int:
    entity_id = intval(param(params, "id"))
    if entity_id <= 0:
        raise LegacyCrmError("ID is not defined or invalid")
    return entity_id


def _fields_param(params: dict[str, Any]) -> dict[str, Any]:
    fields = param(params, "fields", {})
    if isinstance(fields, list) and not fields:
        return {}
    if not isinstance(fields, dict):
        raise LegacyCrmError("Invalid parameters.")
    return fields


# --- reading -------------------------------------------------------------------------------------------

def legacy_query(table: EntityTable, raw_filter: Any, raw_order: Any, clock: Any) -> Query:
    """Legacy filter/order: UPPER_CASE names, unknown fields ignored, no ``logic`` groups (facts §4.2)."""
    if raw_filter in (None, ""):
        raw_filter = {}
    if isinstance(raw_filter, list):
        raw_filter = dict(enumerate(raw_filter)) if raw_filter else {}
    if not isinstance(raw_filter, dict):
        raise LegacyCrmError("Parameter 'filter' must be array.")
    if raw_order in (None, ""):
        raw_order = {}
    if isinstance(raw_order, list):
        raw_order = {name: "ASC" for name in raw_order} if raw_order else {}
    if not isinstance(raw_order, dict):
        raise LegacyCrmError("Parameter 'order' must be array.")
    where = Group()
    for key, value in raw_filter.items():
        operation, name = split_key(str(key))
        spec = table.field(name)
        if spec is None or isinstance(value, dict):
            continue
        where.members.append(make_condition(spec, operation, value, clock, strict=False))
    order = []
    for name, direction in raw_order.items():
        spec = table.field(str(name).upper())
        if spec is not None:
            order.append((spec, str(direction).upper() == "DESC"))
    if not order:
        order = [(table.field(name), descending) for name, descending in table.type.default_order]
    return Query(where, order)


def legacy_offset(start: int) -> int:
    """Legacy lists page with ``iNumPage = intval(start / 50) + 1`` (IRestService::getNavData), so a
    ``start`` of 30 reads the first page; any negative start means "no count" like -1."""
    if start < 0:
        return -1
    return start // PAGE_SIZE * PAGE_SIZE


def list_entities(entity_type: EntityType, ctx: CallContext, params: dict) -> Page:
    table = _table(ctx, entity_type)
    query = legacy_query(table, param(params, "filter"), param(params, "order"), _store(ctx).clock)
    select = array_values(param(params, "select"))
    page = run(table, query, legacy_offset(intval(param(params, "start", 0))))
    view = legacy_view(table, select)
    return Page([view(entity_id) for entity_id in page.ids], total=page.total, next=page.next)


def get_entity(entity_type: EntityType, ctx: CallContext, params: dict) -> dict[str, Any]:
    entity_id = _entity_id(params)
    table = _table(ctx, entity_type)
    if entity_id not in table.rows:
        raise LegacyCrmError("Not found")
    return table.full_row(entity_id)


def describe_fields(entity_type: EntityType, ctx: CallContext, params: dict) -> dict[str, Any]:
    return {spec.name: spec.describe() for spec in _table(ctx, entity_type).all_fields}


# --- writing -------------------------------------------------------------------------------------------

def add_entity(entity_type: EntityType, ctx: CallContext, params: dict) -> int:
    try:
        return _store(ctx).add(entity_type.key, _fields_param(params), origin_of(ctx))
    except InvalidFieldValue as error:
        raise LegacyCrmError(f"Field '{error.field_name}' has an invalid value.") from None


def update_entity(entity_type: EntityType, ctx: CallContext, params: dict) -> bool:
    entity_id = _entity_id(params)
    try:
        _store(ctx).update(entity_type.key, entity_id, _fields_param(params), origin_of(ctx))
    except EntityNotFound:
        raise LegacyCrmError("Not found") from None
    except InvalidFieldValue as error:
        raise LegacyCrmError(f"Field '{error.field_name}' has an invalid value.") from None
    return True


def delete_entity(entity_type: EntityType, ctx: CallContext, params: dict) -> bool:
    entity_id = _entity_id(params)
    try:
        _store(ctx).delete(entity_type.key, entity_id, origin_of(ctx))
    except EntityNotFound:
        raise LegacyCrmError("Not found") from None
    return True


# --- user fields ---------------------------------------------------------------------------------------

def _require_admin(ctx: CallContext) -> None:
    if not ctx.caller.is_admin:
        raise LegacyCrmError("Access denied.")


def add_user_field(entity_type: EntityType, ctx: CallContext, params: dict) -> int:
    _require_admin(ctx)
    fields = upper_keys(_fields_param(params))
    name = str(fields.get("FIELD_NAME") or "")
    if not name:
        raise LegacyCrmError("The parameter 'FIELD_NAME' is required.")
    label = fields.get("EDIT_FORM_LABEL") or fields.get("LABEL") or ""
    if isinstance(label, dict):  # per-language labels: {"en": "...", "de": "..."}
        label = next(iter(label.values()), "")
    items = tuple(str(item.get("VALUE", "")) for item in array_values(fields.get("LIST")) or []
                  if isinstance(item, dict))
    try:
        user_field = _store(ctx).add_user_field(
            entity_type.key, name, str(fields.get("USER_TYPE_ID") or "string"), label=str(label),
            multiple=str(fields.get("MULTIPLE", "N")).upper() == "Y",
            mandatory=str(fields.get("MANDATORY", "N")).upper() == "Y", items=items,
            settings=fields.get("SETTINGS") if isinstance(fields.get("SETTINGS"), dict) else None,
            xml_id=str(fields.get("XML_ID") or ""), sort=intval(fields.get("SORT", 100)) or 100,
        )
    except (UserFieldError, ValueError) as error:
        raise LegacyCrmError(str(error)) from None
    return user_field.id


def list_user_fields(entity_type: EntityType, ctx: CallContext, params: dict) -> list[dict[str, Any]]:
    table = _table(ctx, entity_type)
    user_fields = sorted(table.user_fields.values(), key=lambda user_field: user_field.id)
    return [user_field.definition() for user_field in user_fields]


def _own_user_field(entity_type: EntityType, ctx: CallContext, params: dict) -> Any:
    found = _store(ctx).user_field_by_id(_entity_id(params))
    if found is None or found[0].type.key != entity_type.key:
        raise LegacyCrmError("Not found")
    return found[1]


def get_user_field(entity_type: EntityType, ctx: CallContext, params: dict) -> dict[str, Any]:
    return _own_user_field(entity_type, ctx, params).definition()


def delete_user_field(entity_type: EntityType, ctx: CallContext, params: dict) -> bool:
    _require_admin(ctx)
    user_field = _own_user_field(entity_type, ctx, params)
    _store(ctx).remove_user_field(entity_type.key, user_field.name)
    return True


# --- registration --------------------------------------------------------------------------------------

_ENTITY_METHODS: dict[str, Callable[..., Any]] = {
    "fields": describe_fields,
    "list": list_entities,
    "get": get_entity,
    "add": add_entity,
    "update": update_entity,
    "delete": delete_entity,
}
_USER_FIELD_METHODS: dict[str, Callable[..., Any]] = {
    "add": add_user_field,
    "list": list_user_fields,
    "get": get_user_field,
    "delete": delete_user_field,
}


def _register() -> None:
    for entity_type in LEGACY_TYPES:
        prefix = f"crm.{entity_type.legacy_name}"
        for verb, handler in _ENTITY_METHODS.items():
            rest_method(f"{prefix}.{verb}", scope="crm")(partial(handler, entity_type))
        if entity_type.uf_entity_id is not None:
            for verb, handler in _USER_FIELD_METHODS.items():
                rest_method(f"{prefix}.userfield.{verb}", scope="crm")(partial(handler, entity_type))


_register()
