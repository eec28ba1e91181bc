"""Table schemas from the portal's field descriptions (``crm.*.fields``, ``crm.item.fields``).

Each field becomes a `ColumnSpec` named in snake_case (STAGE_ID / stageId -> stage_id) with a
`ColumnType` chosen from its Bitrix type (facts §4.5). User fields (``isDynamic``) are included;
their names come from portal admins, so a name that is not a safe identifier is skipped with a
warning rather than sent near SQL. ``ID``/``id`` is the frame's own ``id`` column. A money field
(``"100.50|USD"``) is two columns: the amount as DECIMAL and ``<column>_currency`` as TEXT, unless a
field of the portal already takes that name.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.entities import EntityKind
from connectors.bitrix24.errors import MalformedResponse
from connectors.bitrix24.values import CURRENCY, currency_column
from connectors.tables import RESERVED_COLUMNS, ColumnSpec, ColumnType, InvalidIdentifier, TableSchema

log = logging.getLogger(__name__)

_TYPES: dict[str, ColumnType] = {
    "integer": ColumnType.INTEGER,
    "double": ColumnType.DOUBLE,
    "money": ColumnType.DECIMAL,
    "boolean": ColumnType.BOOLEAN,
    "date": ColumnType.DATE,
    "datetime": ColumnType.TIMESTAMP,
    # Reference types that hold one numeric id in the documented deal fields (ASSIGNED_BY_ID,
    # CATEGORY_ID, COMPANY_ID, CONTACT_ID).
    "user": ColumnType.INTEGER,
    "crm_category": ColumnType.INTEGER,
    "crm_company": ColumnType.INTEGER,
    "crm_contact": ColumnType.INTEGER,
    # Structured values.
    "crm_multifield": ColumnType.JSON,
    "file": ColumnType.JSON,
    "address": ColumnType.JSON,
}
# Everything else (string, char, crm_status, enumeration, crm_currency, url, crm, ...) is text.


def column_type(description: Mapping) -> ColumnType:
    if _truthy(description.get("isMultiple")):
        return ColumnType.JSON
    return _TYPES.get(str(description.get("type") or "").lower(), ColumnType.TEXT)


def snake_case(name: str) -> str:
    """STAGE_ID -> stage_id, stageId -> stage_id, ufCrm2_1639 -> uf_crm2_1639, UF_CRM_5 -> uf_crm_5."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    spaced = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", "_", spaced)
    return re.sub(r"[^a-z0-9]+", "_", spaced.lower()).strip("_")


def schema_from_fields(kind: EntityKind, fields: Mapping[str, Mapping]) -> TableSchema:
    """Pure mapping of a ``*.fields`` answer to the table schema of ``kind``."""
    columns: list[ColumnSpec] = []
    taken: set[str] = set(RESERVED_COLUMNS)
    # Derived currency columns yield to any field of the portal that maps to the same name.
    field_names = {snake_case(name) for name in fields}
    for source_name, description in fields.items():
        if not isinstance(description, Mapping) or not _listed(kind, source_name, description):
            continue
        name = snake_case(source_name)
        if source_name == kind.id_field or name == "id":
            continue  # the frame's own id column
        if name in taken:
            log.warning("%s: field %r maps to column %r, which is taken; skipped", kind.table,
                        source_name, name)
            continue
        try:
            column = ColumnSpec(name=name, type=column_type(description), source_name=source_name,
                                title=_title(description, source_name),
                                is_user_field=_truthy(description.get("isDynamic")))
        except InvalidIdentifier:
            log.warning("%s: field %r has no safe column name; skipped", kind.table, source_name)
            continue
        taken.add(name)
        columns.append(column)
        currency = currency_column(name)
        if column.type is ColumnType.DECIMAL and currency not in field_names | taken:
            try:
                columns.append(ColumnSpec(name=currency, type=ColumnType.TEXT, source_name=source_name,
                                          title=f"{column.title} (currency)",
                                          is_user_field=column.is_user_field, source_part=CURRENCY))
                taken.add(currency)
            except InvalidIdentifier:
                log.warning("%s: no currency column for %r (name too long)", kind.table, source_name)
    return TableSchema(kind.table, tuple(columns))


def table_schema(client: Bitrix24Client, kind: EntityKind) -> TableSchema:
    """Ask the portal for ``kind``'s fields (user fields included) and map them."""
    params = {"entityTypeId": kind.entity_type_id} if kind.value_style == "item" else {}
    result = client.call(kind.fields_method, params).result
    fields = result.get("fields") if kind.value_style == "item" and isinstance(result, Mapping) else result
    if not isinstance(fields, Mapping):
        raise MalformedResponse(kind.fields_method, 200, "fields is not an object", repr(result)[:200])
    return schema_from_fields(kind, fields)


def _listed(kind: EntityKind, source_name: str, description: Mapping) -> bool:
    """Does the list method return this field with the kind's ``select``?

    Legacy lists return standard single-valued fields for ``*`` and user fields for ``UF_*``;
    multiple fields such as PHONE or CONTACT_IDS only when named (facts §4.3). crm.item.list's
    ``*`` returns everything (facts §4.4).
    """
    if kind.value_style == "item" or source_name in kind.select:
        return True
    if _truthy(description.get("isDynamic")) or source_name.startswith("UF_"):
        return "UF_*" in kind.select
    return not _truthy(description.get("isMultiple"))


def _title(description: Mapping, fallback: str) -> str:
    for key in ("formLabel", "listLabel", "title"):
        value = description.get(key)
        if isinstance(value, str) and value:
            return value
    return fallback


def _truthy(value: object) -> bool:
    return value is True or value in ("Y", "y", "1", 1, "true")
