"""The two ways a stored row is shown: legacy ``select`` projections and the crm.item camelCase view."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from emulator.crm.fields import Field, native_converter
from emulator.crm.table import EntityTable

RowView = Callable[[int], dict[str, Any]]


def legacy_view(table: EntityTable, select: list[str] | None) -> RowView:
    """Legacy list rows: ``*`` = standard fields, ``UF_*`` = user fields, explicit-only fields (PHONE,
    EMAIL, COMMUNICATIONS ...) only when named (facts §4.3); the default is ``*`` + ``UF_*``."""
    rows, extras = table.rows, table.extras
    names = [str(name) for name in select] if select else ["*", "UF_*"]
    wanted: set[str] = set()
    if "*" in names:
        wanted.update(spec.name for spec in table.type.fields)
    if "UF_*" in names:
        wanted.update(table.user_fields)
    wanted.update(name for name in names if table.field(name) is not None)
    # Bitrix always returns the ID column of a list row.
    wanted.add("ID")
    stored = [spec.name for spec in table.row_fields if spec.name in wanted]
    explicit = [spec.name for spec in table.type.explicit_fields if spec.name in wanted]

    if len(stored) == len(table.row_fields) and not explicit:
        return rows.__getitem__  # the stored dict is exactly the answer: no copy

    def project(entity_id: int) -> dict[str, Any]:
        row = rows[entity_id]
        shown = {name: row[name] for name in stored}
        if explicit:
            row_extras = extras.get(entity_id, {})
            for name in explicit:
                if row_extras.get(name):
                    shown[name] = row_extras[name]
        return shown

    return project


def item_field_name(spec: Field, original_uf_names: bool) -> str:
    if original_uf_names and spec.name.startswith("UF_"):
        return spec.name
    return spec.camel


def item_view(table: EntityTable, select: list[str] | None, original_uf_names: bool) -> RowView:
    """crm.item rows: camelCase keys, native numbers, ``fm`` multifields only via ``*`` (facts §4.4)."""
    names = [str(name) for name in select] if select else ["*"]
    everything = "*" in names
    chosen: list[Field] = []
    for spec in table.row_fields:
        if everything or spec.name == "ID" or item_field_name(spec, original_uf_names) in names:
            chosen.append(spec)
    if not everything:
        uf_wildcard = "ufCrm*" in names or "UF_*" in names
        if uf_wildcard:
            chosen.extend(spec for spec in table.user_fields.values() if spec not in chosen)
    plan = [(spec.name, item_field_name(spec, original_uf_names), native_converter(spec)) for spec in chosen]
    with_fm = everything and table.type.has_multifields
    entity_type_id = table.type.entity_type_id
    rows, extras = table.rows, table.extras

    def render(entity_id: int) -> dict[str, Any]:
        row = rows[entity_id]
        item = {camel: convert(row[name]) for name, camel, convert in plan}
        if with_fm:
            item["fm"] = _fm(extras.get(entity_id, {}))
        if everything:
            item["entityTypeId"] = entity_type_id
        return item

    return render


def _fm(row_extras: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"id": int(entry["ID"]), "valueType": entry["VALUE_TYPE"], "value": entry["VALUE"],
         "typeId": entry["TYPE_ID"]}
        for values in row_extras.values() if isinstance(values, list)
        for entry in values
    ]
