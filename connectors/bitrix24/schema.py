"""Table schemas from the portal's field descriptions (``crm.*.fields``, ``crm.item.fields``).

Each field becomes a `ColumnSpec` named in snake_case (STAGE_ID / stageId -> stage_id) with a
`ColumnType` chosen from its Bitrix type (facts §4.5). User fields (``isDynamic``) are included;
their names come from portal admins, so a name that is not a safe identifier is skipped with a
warning rather than sent near SQL. ``ID``/``id`` is the frame's own ``id`` column.

One kind of field has one column type in every table, legacy or crm.item (issue 10):

* **Y/N flags are BOOLEAN.** The legacy ``*.fields`` type them ``char`` with values ``"Y"``/``"N"``
  (OPENED, CLOSED, IS_NEW, HAS_PHONE, COMPLETED ...), crm.item.fields types the same fields
  ``boolean`` (facts §4.4, §4.5).
* **Money is DECIMAL(18, 2) with its currency beside it.** A ``money`` user field (``"100.50|USD"``)
  is two columns: the amount and ``<column>_currency`` (unless a field of the portal already takes
  that name). The standard amounts are typed ``double`` by the portal but are money by meaning:
  `MONEY_FIELDS` names them with the field holding their currency (OPPORTUNITY/TAX_VALUE/REVENUE
  in CURRENCY_ID, an activity's RESULT_SUM in RESULT_CURRENCY_ID); any other ``double`` stays DOUBLE.
* **References to numeric objects are BIGINT** (`REFERENCE_TYPES`: ``user``, ``crm_contact``,
  ``crm_lead``, ``crm_quote`` ...), like ``integer`` fields. Codes that look like ids but are
  strings (STAGE_ID, STATUS_ID, SOURCE_ID, TYPE_ID, CURRENCY_ID: ``crm_status``, ``crm_currency``)
  stay TEXT.
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

# Bitrix types of fields that hold one id of a numeric object (facts §4.5; the docs' field tables:
# api-reference/crm/deals/crm-deal-fields.md, .../universal/object-fields.md for ``crm_entity``,
# the parentId<entityTypeId> fields of crm.item). ``crm_enum_ownertype`` is an entity type id.
REFERENCE_TYPES = frozenset({"user", "employee", "crm_category", "crm_company", "crm_contact", "crm_lead",
                             "crm_deal", "crm_quote", "crm_entity", "crm_enum_ownertype"})

_TYPES: dict[str, ColumnType] = {
    "integer": ColumnType.INTEGER,
    "double": ColumnType.DOUBLE,
    "money": ColumnType.DECIMAL,
    "boolean": ColumnType.BOOLEAN,
    "char": ColumnType.BOOLEAN,  # the legacy Y/N flag (crm.item.fields calls the same field boolean)
    "date": ColumnType.DATE,
    "datetime": ColumnType.TIMESTAMP,
    **{reference: ColumnType.INTEGER for reference in REFERENCE_TYPES},
    # Structured values.
    "crm_multifield": ColumnType.JSON,
    "file": ColumnType.JSON,
    "address": ColumnType.JSON,
}
# Everything else (string, crm_status, enumeration, crm_currency, url, crm, ...) is text.

# Standard amounts, by column name (legacy and crm.item spellings meet in snake_case), and the
# column holding their currency: the docs type them ``double``, the portal shows them as money in
# the record's currency (crm-deal-fields.md: OPPORTUNITY "Amount", TAX_VALUE; crm-company-fields.md:
# REVENUE; crm-activity-fields.md: RESULT_SUM with RESULT_CURRENCY_ID).
MONEY_FIELDS: dict[str, str] = {
    "opportunity": "currency_id",
    "tax_value": "currency_id",
    "revenue": "currency_id",
    "result_sum": "result_currency_id",
}


def column_type(description: Mapping, name: str = "") -> ColumnType:
    """The column type of one ``*.fields`` entry; ``name`` (snake_case) marks the standard amounts.

    A multiple field is JSON (an array), whatever its type.
    """
    if _truthy(description.get("isMultiple")):
        return ColumnType.JSON
    bitrix_type = str(description.get("type") or "").lower()
    if bitrix_type == "double" and name in MONEY_FIELDS and not _truthy(description.get("isDynamic")):
        return ColumnType.DECIMAL
    return _TYPES.get(bitrix_type, ColumnType.TEXT)


def currency_of(schema: TableSchema, column: ColumnSpec) -> str | None:
    """The column holding the currency of money column ``column`` of ``schema``, or None.

    ``<name>_currency`` for a money user field, `MONEY_FIELDS`' currency field for a standard
    amount, when that column is in the schema.
    """
    if column.type is not ColumnType.DECIMAL:
        return None
    names = {c.name for c in schema.columns}
    for candidate in (currency_column(column.name), MONEY_FIELDS.get(column.name)):
        if candidate in names:
            return candidate
    return None


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
            column = ColumnSpec(name=name, type=column_type(description, name), source_name=source_name,
                                title=_title(description, source_name),
                                is_user_field=_truthy(description.get("isDynamic")))
        except InvalidIdentifier:
            log.warning("%s: field %r has no safe column name; skipped", kind.table, source_name)
            continue
        taken.add(name)
        columns.append(column)
        currency = currency_column(name)
        if column.type is ColumnType.DECIMAL and name not in MONEY_FIELDS \
                and currency not in field_names | taken:
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
