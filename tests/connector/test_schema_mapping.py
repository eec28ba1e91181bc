"""Mapping ``*.fields`` answers to table schemas (pure): types, names, user fields, exclusions.

Column types follow the Bitrix field type (facts §4.5); names are snake_case; reserved names of the
table contract never appear; user-field names from portal admins are validated.
"""

from __future__ import annotations

import logging

import pytest

from connectors.bitrix24.entities import ACTIVITY, CONTACT, DEAL, smart_process_kind
from connectors.bitrix24.schema import column_type, currency_of, schema_from_fields, snake_case
from connectors.tables import ColumnType


def field(type_: str, **extra: object) -> dict:
    return {"type": type_, "isRequired": False, "isReadOnly": False, "isMultiple": False,
            "isDynamic": False, "title": type_, **extra}


@pytest.mark.parametrize(("bitrix_type", "expected"), [
    ("integer", ColumnType.INTEGER), ("double", ColumnType.DOUBLE), ("money", ColumnType.DECIMAL),
    ("string", ColumnType.TEXT), ("char", ColumnType.BOOLEAN), ("crm_status", ColumnType.TEXT),
    ("enumeration", ColumnType.TEXT), ("boolean", ColumnType.BOOLEAN), ("date", ColumnType.DATE),
    ("datetime", ColumnType.TIMESTAMP), ("crm_multifield", ColumnType.JSON), ("file", ColumnType.JSON),
    ("address", ColumnType.JSON), ("user", ColumnType.INTEGER), ("crm_currency", ColumnType.TEXT),
    ("crm_lead", ColumnType.INTEGER), ("crm_quote", ColumnType.INTEGER), ("crm_deal", ColumnType.INTEGER),
    ("crm_entity", ColumnType.INTEGER), ("crm_enum_ownertype", ColumnType.INTEGER),
    ("something_new", ColumnType.TEXT),
])
def test_bitrix_types_map_to_column_types(bitrix_type: str, expected: ColumnType) -> None:
    assert column_type(field(bitrix_type)) is expected


def test_any_multiple_field_is_json() -> None:
    assert column_type(field("integer", isMultiple=True)) is ColumnType.JSON


@pytest.mark.parametrize(("name", "snake"), [
    ("STAGE_ID", "stage_id"), ("stageId", "stage_id"), ("UF_CRM_1639669411830", "uf_crm_1639669411830"),
    ("ufCrm2_1639669411830", "uf_crm2_1639669411830"), ("assignedById", "assigned_by_id"),
    ("ID", "id"), ("isManualOpportunity", "is_manual_opportunity"),
])
def test_column_names_are_snake_case(name: str, snake: str) -> None:
    assert snake_case(name) == snake


def test_legacy_schema_keeps_what_the_list_returns() -> None:
    fields = {
        "ID": field("integer"), "TITLE": field("string"), "OPPORTUNITY": field("double"),
        "CLOSED": field("char"), "DATE_MODIFY": field("datetime"),
        "CONTACT_IDS": field("crm_contact", isMultiple=True),  # not returned by crm.deal.list
        "UF_CRM_5": field("money", isDynamic=True, formLabel="Budget"),
        "UF_CRM_TAGS": field("enumeration", isDynamic=True, isMultiple=True),
    }
    schema = schema_from_fields(DEAL, fields)
    assert schema.name == "deals"
    assert [(c.name, c.type) for c in schema.columns] == [
        ("title", ColumnType.TEXT), ("opportunity", ColumnType.DECIMAL), ("closed", ColumnType.BOOLEAN),
        ("date_modify", ColumnType.TIMESTAMP), ("uf_crm_5", ColumnType.DECIMAL),
        ("uf_crm_5_currency", ColumnType.TEXT), ("uf_crm_tags", ColumnType.JSON)]
    budget = schema.column("uf_crm_5")
    assert (budget.source_name, budget.title, budget.is_user_field) == ("UF_CRM_5", "Budget", True)
    currency = schema.column("uf_crm_5_currency")
    assert (currency.source_name, currency.source_part, currency.title) == ("UF_CRM_5", "currency",
                                                                           "Budget (currency)")


def test_a_money_fields_currency_column_yields_to_a_portal_field_of_that_name() -> None:
    fields = {"UF_CRM_5": field("money", isDynamic=True),
              "UF_CRM_5_CURRENCY": field("integer", isDynamic=True)}
    schema = schema_from_fields(DEAL, fields)
    assert [(c.name, c.type, c.source_name) for c in schema.columns] == [
        ("uf_crm_5", ColumnType.DECIMAL, "UF_CRM_5"),
        ("uf_crm_5_currency", ColumnType.INTEGER, "UF_CRM_5_CURRENCY")]


def test_activity_lists_return_no_user_fields() -> None:
    fields = {"SUBJECT": field("string"), "UF_X": field("string", isDynamic=True)}
    schema = schema_from_fields(ACTIVITY, fields)
    assert [c.name for c in schema.columns] == ["subject"]


def test_multifields_are_kept_where_the_kind_selects_them() -> None:
    schema = schema_from_fields(CONTACT, {"ID": field("integer"),
                                          "PHONE": field("crm_multifield", isMultiple=True)})
    assert schema.column("phone").type is ColumnType.JSON


def test_item_schema_keeps_every_field_with_camel_case_names() -> None:
    fields = {"id": field("integer"), "title": field("string"), "updatedTime": field("datetime"),
              "contactIds": field("crm_contact", isMultiple=True),
              "ufCrm3_77": field("boolean", isDynamic=True)}
    schema = schema_from_fields(smart_process_kind(1038), fields)
    assert schema.name == "items_1038"
    assert [c.name for c in schema.columns] == ["title", "updated_time", "contact_ids", "uf_crm3_77"]


def test_reserved_and_unsafe_names_are_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    fields = {"ID": field("integer"), "PORTAL": field("string"), "_SYNCED_AT": field("string"),
              "UF_CRM_" + "X" * 70: field("string", isDynamic=True), "TITLE": field("string")}
    with caplog.at_level(logging.WARNING):
        schema = schema_from_fields(DEAL, fields)
    assert [c.name for c in schema.columns] == ["synced_at", "title"]
    assert "PORTAL" in caplog.text and "no safe column name" in caplog.text


def test_standard_amounts_are_money_with_the_records_currency_beside_them() -> None:
    fields = {"OPPORTUNITY": field("double"), "TAX_VALUE": field("double"), "CURRENCY_ID": field("crm_currency"),
              "PROBABILITY": field("double"), "UF_CRM_7": field("double", isDynamic=True)}
    schema = schema_from_fields(DEAL, fields)
    assert [(c.name, c.type) for c in schema.columns] == [
        ("opportunity", ColumnType.DECIMAL), ("tax_value", ColumnType.DECIMAL),
        ("currency_id", ColumnType.TEXT), ("probability", ColumnType.DOUBLE), ("uf_crm_7", ColumnType.DOUBLE)]
    assert currency_of(schema, schema.column("opportunity")) == "currency_id"
    assert currency_of(schema, schema.column("probability")) is None


def test_codes_that_look_like_ids_stay_text_and_references_are_integers() -> None:
    fields = {"STAGE_ID": field("crm_status"), "CURRENCY_ID": field("crm_currency"),
              "LEAD_ID": field("crm_lead"), "QUOTE_ID": field("crm_quote"), "ASSIGNED_BY_ID": field("user")}
    schema = schema_from_fields(DEAL, fields)
    assert {c.name: c.type for c in schema.columns} == {
        "stage_id": ColumnType.TEXT, "currency_id": ColumnType.TEXT, "lead_id": ColumnType.INTEGER,
        "quote_id": ColumnType.INTEGER, "assigned_by_id": ColumnType.INTEGER}
