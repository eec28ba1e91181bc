"""Reference data of a portal in two ``batch`` requests, and its stage history by id.

`load_reference` reads every dimension of `connectors.dimensions` (facts §4.8): the first batch asks
for users (active and fired, first page), departments, all status dictionaries, currencies, deal
pipelines, smart-process types and the ``*.fields`` / ``crm.<entity>.userfield.list`` of the standard
entities; the second asks for what the first revealed: further pages of users and departments,
and pipelines and ``crm.item.fields`` of each smart-process type. Never one request per row.

`read_stage_history` reads ``crm.stagehistory.list`` of several entity types after their high-water
marks, keyset-paged (``>ID``, ``order ID ASC``, ``start=-1``, chained with ``$result``; facts §4.1)
with the 50 commands of a batch shared among the types.

Frame building is pure (`frames_from_answers`), so it is tested without HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from connectors.bitrix24.batch import MAX_COMMANDS, BatchResult, Command, result_ref
from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.entities import STANDARD_KINDS, EntityKind, smart_process_kind
from connectors.bitrix24.errors import MalformedResponse
from connectors.bitrix24.schema import schema_from_fields, snake_case
from connectors.dimensions import (
    COLUMNS,
    CRM_CATEGORIES,
    CRM_STATUSES,
    CRM_TYPES,
    CURRENCIES,
    DEPARTMENTS,
    STAGE_HISTORY,
    USER_FIELD_ENUMS,
    USER_FIELDS,
    USERS,
    DimensionSchema,
)

PAGE_SIZE = 50
DEAL_TYPE_ID = 2
LEAD_TYPE_ID = 1
# Legacy entities with user fields of their own (crm.<entity>.userfield.list; facts §4.8).
USER_FIELD_ENTITIES = {"deal": "deals", "contact": "contacts", "company": "companies", "lead": "leads"}
_SEMANTICS = {"process": "P", "success": "S", "failure": "F", "apology": "F"}

# The events that change reference data, bound offline like the CRM ones where the portal lists them
# (`events`, facts §2.6): a legacy entity's user field added, changed, deleted or its list items set
# (``onCrmDealUserFieldAdd`` ... ``onCrmDealUserFieldSetEnumValues``), a smart-process type added,
# renamed or deleted (``ONCRMTYPE*``), a user added (``ONUSERADD``, scope ``user``) (facts §3, §4.8).
# Stages, pipelines, departments, currencies and renamed users have none: the schedule covers them.
USER_FIELD_EVENT_VERBS = ("ADD", "UPDATE", "DELETE", "SETENUMVALUES")
REFERENCE_EVENTS: tuple[str, ...] = (
    *(f"ONCRM{entity.upper()}USERFIELD{verb}" for entity in USER_FIELD_ENTITIES for verb in USER_FIELD_EVENT_VERBS),
    "ONCRMTYPEADD", "ONCRMTYPEUPDATE", "ONCRMTYPEDELETE",
    "ONUSERADD",
)
_REFERENCE_EVENTS = frozenset(REFERENCE_EVENTS)


def is_reference_event(event_name: str) -> bool:
    """Whether a queue row of this event name says the portal's reference data changed (its
    ``EVENT_DATA`` names a field, type or user, never a CRM object to re-read)."""
    return event_name.upper() in _REFERENCE_EVENTS


@dataclass(frozen=True)
class ReferenceData:
    """One frame per dimension (columns as in `connectors.dimensions`), plus what a caller needs next."""

    frames: dict[str, pd.DataFrame]
    smart_process_types: tuple[int, ...]  # entityTypeIds, for the stage history
    requests: int  # HTTP requests this load took

    def frame(self, dimension: DimensionSchema) -> pd.DataFrame:
        return self.frames[dimension.name]


def load_reference(client: Bitrix24Client) -> ReferenceData:
    """Every dimension of the portal; two batch requests (one more page of users per 2,500 users)."""
    first = _first_commands()
    answers = client.batch(first)
    _raise_failures(answers)
    types = _types(answers.result("types"))
    requests = 1
    follow_up = _follow_up_commands(answers, types)
    while follow_up:
        more = client.batch(dict(list(follow_up.items())[:MAX_COMMANDS]))
        requests += 1
        _raise_failures(more)
        answers.absorb(more)
        follow_up = dict(list(follow_up.items())[MAX_COMMANDS:])
    frames = frames_from_answers(answers.results, types)
    return ReferenceData(frames, tuple(entity_type_id for entity_type_id, _, _ in types), requests)


def _first_commands() -> dict[str, Command]:
    commands = {
        "types": Command("crm.type.list", {"start": 0}),
        "users_active": Command("user.get", {"FILTER": {"ACTIVE": "Y"}, "start": 0}),
        "users_fired": Command("user.get", {"FILTER": {"ACTIVE": "N"}, "start": 0}),
        "departments": Command("department.get", {"start": 0}),
        "statuses": Command("crm.status.list", {"order": {"ENTITY_ID": "ASC", "SORT": "ASC"}}),
        "currencies": Command("crm.currency.list", {}),
        f"categories_{DEAL_TYPE_ID}": Command("crm.category.list", {"entityTypeId": DEAL_TYPE_ID}),
    }
    for kind in STANDARD_KINDS:
        commands[f"fields_{kind.key}"] = Command(kind.fields_method, {})
    for entity in USER_FIELD_ENTITIES:
        commands[f"uf_{entity}"] = Command(f"crm.{entity}.userfield.list", {})
    return commands


def _follow_up_commands(answers: BatchResult, types: Sequence[tuple[int, int, str]]) -> dict[str, Command]:
    commands: dict[str, Command] = {}
    for key, method, params in (("users_active", "user.get", {"FILTER": {"ACTIVE": "Y"}}),
                                ("users_fired", "user.get", {"FILTER": {"ACTIVE": "N"}}),
                                ("departments", "department.get", {})):
        total = answers.totals.get(key, 0)
        for start in range(PAGE_SIZE, total, PAGE_SIZE):
            commands[f"{key}@{start}"] = Command(method, {**params, "start": start})
    for entity_type_id, _, _ in types:
        commands[f"categories_{entity_type_id}"] = Command("crm.category.list", {"entityTypeId": entity_type_id})
        commands[f"fields_item:{entity_type_id}"] = Command("crm.item.fields", {"entityTypeId": entity_type_id})
    return commands


def _raise_failures(answers: BatchResult) -> None:
    """Reference data is all or nothing: a refused command (e.g. no ``department`` scope) fails the load."""
    for error in answers.errors.values():
        raise error


def _types(result: Any) -> list[tuple[int, int, str]]:
    """(entityTypeId, id, title) of each smart process; ``crm.type.list`` answers ``{"types": [...]}``."""
    rows = result.get("types") if isinstance(result, Mapping) else None
    if not isinstance(rows, list):
        raise MalformedResponse("crm.type.list", 200, "no types array", repr(result)[:200])
    return [(int(row["entityTypeId"]), int(row["id"]), str(row.get("title") or "")) for row in rows]


# --- pure: answers -> frames ----------------------------------------------------------------------------

def frames_from_answers(results: Mapping[str, Any], types: Sequence[tuple[int, int, str]]) -> dict[str, pd.DataFrame]:
    """The dimension frames from the batch results keyed as `load_reference` keys its commands."""
    kinds: list[EntityKind] = [*STANDARD_KINDS, *(smart_process_kind(t, title) for t, _, title in types)]
    users = [row for key, rows in results.items() if key.split("@")[0] in ("users_active", "users_fired")
             for row in _list(rows, "user.get")]
    departments = [row for key, rows in results.items() if key.split("@")[0] == "departments"
                   for row in _list(rows, "department.get")]
    categories = [row for key, answer in results.items() if key.startswith("categories_")
                  for row in _wrapped(answer, "categories", "crm.category.list")]
    user_fields, enums = _user_fields(results, kinds)
    return {
        USERS.name: _frame(USERS, [_user(row) for row in {str(row["ID"]): row for row in users}.values()]),
        DEPARTMENTS.name: _frame(DEPARTMENTS, [_department(row) for row in departments]),
        CRM_STATUSES.name: _frame(CRM_STATUSES, [_status(row) for row in _list(results["statuses"],
                                                                                 "crm.status.list")]),
        CRM_CATEGORIES.name: _frame(CRM_CATEGORIES, [_category(row) for row in categories]),
        CRM_TYPES.name: _frame(CRM_TYPES, [
            {"entity_type_id": t, "type_id": type_id, "title": title, "table_name": f"items_{t}"}
            for t, type_id, title in types]),
        CURRENCIES.name: _frame(CURRENCIES, [_currency(row) for row in _list(results["currencies"],
                                                                              "crm.currency.list")]),
        USER_FIELDS.name: _frame(USER_FIELDS, user_fields),
        USER_FIELD_ENUMS.name: _frame(USER_FIELD_ENUMS, enums),
        COLUMNS.name: _frame(COLUMNS, _columns(results, kinds, enums)),
    }


def _frame(dimension: DimensionSchema, rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(dimension.column_names))
    return frame.drop_duplicates(subset=list(dimension.key), keep="last").reset_index(drop=True)


def _list(result: Any, method: str) -> list[dict]:
    if result in (None, []):
        return []
    if not isinstance(result, list) or not all(isinstance(row, Mapping) for row in result):
        raise MalformedResponse(method, 200, "result is not an array of records", repr(result)[:200])
    return result


def _wrapped(result: Any, key: str, method: str) -> list[dict]:
    rows = result.get(key) if isinstance(result, Mapping) else None
    return _list(rows if rows is not None else [], method)


def _int(value: Any) -> int | None:
    if value is None or value is False or value == "":  # 0 is a pipeline id, not "empty"
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _yes(value: Any) -> bool:
    return value is True or str(value).upper() in ("Y", "1", "TRUE")


def _label(value: Any) -> str | None:
    """A label as a string; user-field labels may come per language (``{"en": "...", "de": "..."}``)."""
    if isinstance(value, Mapping):
        value = value.get("en") or next((text for text in value.values() if text), None)
    return str(value) if value not in (None, "") else None


def _user(row: Mapping) -> dict[str, Any]:
    departments = [int(d) for d in row.get("UF_DEPARTMENT") or [] if _int(d) is not None]
    name, last_name = row.get("NAME") or "", row.get("LAST_NAME") or ""
    return {
        "user_id": int(row["ID"]), "active": _yes(row.get("ACTIVE")), "name": name or None,
        "last_name": last_name or None, "full_name": f"{name} {last_name}".strip() or None,
        "email": row.get("EMAIL") or None, "work_position": row.get("WORK_POSITION") or None,
        "department_id": departments[0] if departments else None, "department_ids": json.dumps(departments),
    }


def _department(row: Mapping) -> dict[str, Any]:
    return {"department_id": int(row["ID"]), "name": row.get("NAME"), "sort": _int(row.get("SORT")),
            "parent_id": _int(row.get("PARENT")), "head_user_id": _int(row.get("UF_HEAD"))}


def _status_type(entity_id: str) -> int | None:
    """The CRM type whose stages a dictionary holds: STATUS -> 1, DEAL_STAGE[_n] -> 2, DYNAMIC_<t>_STAGE_<c> -> t."""
    if entity_id == "STATUS":
        return LEAD_TYPE_ID
    if entity_id == "DEAL_STAGE" or entity_id.startswith("DEAL_STAGE_"):
        return DEAL_TYPE_ID
    if entity_id.startswith("DYNAMIC_") and "_STAGE_" in entity_id:
        return _int(entity_id.split("_")[1])
    return None


def _status(row: Mapping) -> dict[str, Any]:
    entity_id = str(row["ENTITY_ID"])
    extra = row.get("EXTRA") if isinstance(row.get("EXTRA"), Mapping) else {}
    semantics = _SEMANTICS.get(str(extra.get("SEMANTICS") or ""), row.get("SEMANTICS") or None)
    entity_type_id = _status_type(entity_id)
    category = _int(row.get("CATEGORY_ID"))
    if entity_type_id == DEAL_TYPE_ID and category is None:
        category = 0 if entity_id == "DEAL_STAGE" else _int(entity_id.rsplit("_", 1)[-1])
    return {"entity_id": entity_id, "status_id": str(row["STATUS_ID"]), "name": row.get("NAME"),
            "sort": _int(row.get("SORT")), "semantics": semantics if entity_type_id else None,
            "entity_type_id": entity_type_id, "category_id": category, "color": row.get("COLOR") or None}


def _category(row: Mapping) -> dict[str, Any]:
    return {"entity_type_id": int(row["entityTypeId"]), "category_id": int(row["id"]), "name": row.get("name"),
            "sort": _int(row.get("sort")), "is_default": _yes(row.get("isDefault"))}


def _currency(row: Mapping) -> dict[str, Any]:
    return {"currency_id": str(row["CURRENCY"]), "name": row.get("FULL_NAME") or None,
            "rate": str(row["AMOUNT"]) if row.get("AMOUNT") not in (None, "") else None,
            "rate_count": _int(row.get("AMOUNT_CNT")), "is_base": _yes(row.get("BASE")), "sort": _int(row.get("SORT"))}


def _fields_of(results: Mapping[str, Any], kind: EntityKind) -> Mapping[str, Mapping]:
    answer = results.get(f"fields_{kind.key}")
    if kind.value_style == "item" and isinstance(answer, Mapping):
        answer = answer.get("fields")
    if not isinstance(answer, Mapping):
        raise MalformedResponse(kind.fields_method, 200, "fields is not an object", repr(answer)[:200])
    return answer


def _user_field_name(source_name: str, description: Mapping) -> str:
    """``UF_CRM_...`` of a field: crm.item.fields keys are camelCase, ``upperName`` (or ``title``) is not."""
    for candidate in (description.get("upperName"), description.get("title"), source_name):
        if isinstance(candidate, str) and candidate.upper().startswith("UF_"):
            return candidate.upper()
    return source_name


def _user_fields(results: Mapping[str, Any], kinds: Sequence[EntityKind]) -> tuple[list[dict], list[dict]]:
    """Definitions and list items: ``crm.<entity>.userfield.list`` for the legacy entities (ids, labels,
    ``LIST``), the ``isDynamic`` fields of ``crm.item.fields`` for smart processes."""
    fields_out: list[dict] = []
    enums: list[dict] = []
    for entity, table in USER_FIELD_ENTITIES.items():
        for row in _list(results.get(f"uf_{entity}"), f"crm.{entity}.userfield.list"):
            name = str(row["FIELD_NAME"])
            fields_out.append({
                "table_name": table, "column_name": snake_case(name), "field_name": name,
                "user_field_id": _int(row.get("ID")), "entity_id": row.get("ENTITY_ID"),
                "user_type_id": row.get("USER_TYPE_ID"),
                "label": _label(row.get("EDIT_FORM_LABEL")) or _label(row.get("LIST_COLUMN_LABEL")) or name,
                "multiple": _yes(row.get("MULTIPLE")), "mandatory": _yes(row.get("MANDATORY")),
            })
            for item in row.get("LIST") or []:
                enums.append({"table_name": table, "field_name": name, "item_id": str(item["ID"]),
                              "value": item.get("VALUE"), "sort": _int(item.get("SORT")),
                              "is_default": _yes(item.get("DEF"))})
    for kind in kinds:
        if kind.value_style != "item":
            continue
        for source_name, description in _fields_of(results, kind).items():
            if not isinstance(description, Mapping) or not _yes(description.get("isDynamic")):
                continue
            name = _user_field_name(source_name, description)
            fields_out.append({
                "table_name": kind.table, "column_name": snake_case(source_name), "field_name": name,
                "user_field_id": None, "entity_id": None, "user_type_id": description.get("type"),
                "label": _label(description.get("formLabel")) or _label(description.get("listLabel")) or name,
                "multiple": _yes(description.get("isMultiple")), "mandatory": _yes(description.get("isRequired")),
            })
            for index, item in enumerate(description.get("items") or []):
                enums.append({"table_name": kind.table, "field_name": name, "item_id": str(item["ID"]),
                              "value": item.get("VALUE"), "sort": 10 * (index + 1), "is_default": False})
    return fields_out, enums


def _columns(results: Mapping[str, Any], kinds: Sequence[EntityKind], enums: Sequence[dict]) -> list[dict]:
    """The column dictionary: each entity table's columns as the schema mapping names and types them,
    labelled with the ``*.fields`` title (``formLabel``/``listLabel``/``title``)."""
    items: dict[tuple[str, str], dict[str, str]] = {}
    for item in enums:
        items.setdefault((item["table_name"], item["field_name"]), {})[item["item_id"]] = item["value"]
    rows: list[dict] = []
    for kind in kinds:
        fields = _fields_of(results, kind)
        for column in schema_from_fields(kind, fields).columns:
            description = fields.get(column.source_name) or {}
            field_name = _user_field_name(column.source_name, description) if column.is_user_field \
                else column.source_name
            listed = items.get((kind.table, field_name)) if not column.source_part else None
            rows.append({"table_name": kind.table, "column_name": column.name, "label": column.title,
                         "type": column.type.value, "source_name": column.source_name,
                         "is_user_field": column.is_user_field,
                         "enumeration": json.dumps(listed, ensure_ascii=False) if listed else None})
    return rows


# --- stage history ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HistoryChunk:
    frame: pd.DataFrame  # `connectors.dimensions.STAGE_HISTORY` columns, ids ascending per type
    marks: dict[int, int]  # entity type -> last id read (the mark to store with these rows)
    requests: int
    done: bool  # every type read to its end


def read_stage_history(client: Bitrix24Client, after: Mapping[int, int],
                       max_requests: int | None = None) -> HistoryChunk:
    """New ``crm.stagehistory.list`` rows of each entity type after its high-water mark ``after[type]``.

    ``max_requests`` bounds one call (the caller commits the chunk and comes back for more).
    Lead rows carry ``STATUS_ID``/``STATUS_SEMANTIC_ID``, the others ``STAGE_ID``/``STAGE_SEMANTIC_ID``
    and ``CATEGORY_ID`` ([D] api-reference/crm/crm-stage-history-list.md).
    """
    marks = {int(t): int(mark) for t, mark in after.items()}
    pending = list(marks)
    rows: list[dict[str, Any]] = []
    requests = 0
    while pending and (max_requests is None or requests < max_requests):
        per_type = max(1, MAX_COMMANDS // len(pending))
        commands: dict[str, Command] = {}
        for entity_type_id in pending[:MAX_COMMANDS]:
            for index in range(per_type):
                lower: Any = marks[entity_type_id] if index == 0 else result_ref(
                    f"h{entity_type_id}_{index - 1}", "items", PAGE_SIZE - 1, "ID")
                commands[f"h{entity_type_id}_{index}"] = Command("crm.stagehistory.list", {
                    "entityTypeId": entity_type_id, "filter": {">ID": lower}, "order": {"ID": "ASC"},
                    "start": -1})
        outcome = client.batch(commands)
        requests += 1
        finished: list[int] = []
        for entity_type_id in pending[:MAX_COMMANDS]:
            for index in range(per_type):
                page = _wrapped(outcome.result(f"h{entity_type_id}_{index}"), "items", "crm.stagehistory.list")
                for row in page:
                    row_id = int(row["ID"])
                    if row_id <= marks[entity_type_id]:
                        raise MalformedResponse("crm.stagehistory.list", 200,
                                                f"keyset read did not advance past id {marks[entity_type_id]}")
                    marks[entity_type_id] = row_id
                    rows.append(_history_row(entity_type_id, row))
                if len(page) < PAGE_SIZE:
                    finished.append(entity_type_id)
                    break
        pending = [t for t in pending if t not in finished]
    frame = pd.DataFrame(rows, columns=list(STAGE_HISTORY.column_names))
    return HistoryChunk(frame, marks, requests, not pending)


def _history_row(entity_type_id: int, row: Mapping) -> dict[str, Any]:
    return {
        "entity_type_id": entity_type_id, "id": int(row["ID"]), "type_id": _int(row.get("TYPE_ID")),
        "owner_id": _int(row.get("OWNER_ID")), "created_time": row.get("CREATED_TIME"),
        "category_id": _int(row.get("CATEGORY_ID")),
        "stage_id": row.get("STAGE_ID", row.get("STATUS_ID")),
        "stage_semantic_id": row.get("STAGE_SEMANTIC_ID", row.get("STATUS_SEMANTIC_ID")),
    }


def stage_history_types(smart_process_types: Iterable[int]) -> list[int]:
    """Entity types with a stage history: leads, deals and every smart process (facts §4.8)."""
    return [LEAD_TYPE_ID, DEAL_TYPE_ID, *sorted(set(smart_process_types))]
