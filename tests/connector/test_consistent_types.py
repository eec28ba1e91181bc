"""One kind of field, one column type, in every entity table (issue 10: a model analysts can use).

Built from the emulator's real ``*.fields`` answers for deals, contacts, companies, leads, activities
and smart-process items (legacy and crm.item styles): every Y/N flag is BOOLEAN, every amount is
DECIMAL with a currency column beside it, every reference to a numeric object is an INTEGER (BIGINT)
column, string codes (stages, statuses, sources, types, currencies) stay TEXT, and a column name
means the same type wherever it appears. The records the emulator serves convert to those types
without a single value nulled by the value policy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import pytest

from connectors.bitrix24 import Bitrix24Client, EntityRegistry, WebhookCredentials, frame_and_coercions, scan
from connectors.bitrix24.entities import EntityKind
from connectors.bitrix24.schema import MONEY_FIELDS, REFERENCE_TYPES, currency_of, schema_from_fields, snake_case
from connectors.tables import ColumnType, TableSchema
from emulator.testing import run_emulator

KINDS = {"deals", "contacts", "companies", "leads", "activities"}
STRING_CODES = {"stage_id", "status_id", "source_id", "currency_id", "result_currency_id"}


@pytest.fixture(scope="module")
def described():
    """(kind, raw ``*.fields`` answer, mapped schema, records of a full scan) for every kind."""
    with run_emulator(limits=False, counts={"deal": 60, "contact": 30, "company": 30, "lead": 30,
                                            "activity": 30, "item": 30}, smart_process_types=2) as emu:
        client = Bitrix24Client(WebhookCredentials(emu.webhook_url))
        try:
            kinds = list(EntityRegistry.discover(client))
            answers = []
            for kind in kinds:
                params = {"entityTypeId": kind.entity_type_id} if kind.value_style == "item" else {}
                result = client.call(kind.fields_method, params).result
                fields = result["fields"] if kind.value_style == "item" else result
                records = [record for page in scan(client, kind) for record in page]
                answers.append((kind, fields, schema_from_fields(kind, fields), records))
        finally:
            client.close()
    assert {kind.table for kind, *_ in answers} >= KINDS
    assert any(kind.value_style == "item" for kind, *_ in answers)
    return answers


def _single_fields(kind: EntityKind, fields: Mapping[str, Mapping], schema: TableSchema):
    """(column, Bitrix type, description) of the schema's single-valued fields."""
    names = {column.source_name: column for column in schema.columns if not column.source_part}
    for source, description in fields.items():
        column = names.get(source)
        if column is not None and not description.get("isMultiple"):
            yield column, str(description["type"]), description


def test_every_yes_no_flag_is_boolean(described) -> None:
    flags = [(kind.table, column.name, column.type) for kind, fields, schema, _ in described
             for column, bitrix_type, _ in _single_fields(kind, fields, schema) if bitrix_type in ("char", "boolean")]
    assert {table for table, *_ in flags} >= KINDS  # every kind has flags (OPENED, COMPLETED ...)
    assert [flag for flag in flags if flag[2] is not ColumnType.BOOLEAN] == []


def test_every_amount_is_decimal_with_its_currency_beside_it(described) -> None:
    money = []
    for kind, fields, schema, _ in described:
        for column, bitrix_type, description in _single_fields(kind, fields, schema):
            if bitrix_type == "money" or (column.name in MONEY_FIELDS and not description.get("isDynamic")):
                money.append((kind.table, column.name, column.type, currency_of(schema, column)))
    assert {"deals", "leads", "companies", "activities"} <= {table for table, *_ in money}
    assert any(table.startswith("items_") for table, *_ in money)
    assert [entry for entry in money if entry[2] is not ColumnType.DECIMAL or entry[3] is None] == []
    assert all(schema.column(currency).type is ColumnType.TEXT
               for kind, _, schema, _ in described for column in schema.columns
               if (currency := currency_of(schema, column)) is not None)


def test_every_reference_id_is_an_integer_and_string_codes_stay_text(described) -> None:
    references, codes = [], []
    for kind, fields, schema, _ in described:
        for column, bitrix_type, _ in _single_fields(kind, fields, schema):
            if bitrix_type in REFERENCE_TYPES or (bitrix_type == "integer" and column.name.endswith("_id")):
                references.append((kind.table, column.name, column.type))
            if column.name in STRING_CODES or bitrix_type in ("crm_status", "crm_currency"):
                codes.append((kind.table, column.name, column.type))
    found = {name for _, name, _ in references}
    assert {"lead_id", "quote_id", "company_id", "contact_id", "assigned_by_id", "category_id",
            "owner_type_id"} <= found
    assert [entry for entry in references if entry[2] is not ColumnType.INTEGER] == []
    assert codes and [entry for entry in codes if entry[2] is not ColumnType.TEXT] == []


def test_a_column_name_has_one_type_in_every_table(described) -> None:
    types: dict[str, dict[ColumnType, list[str]]] = defaultdict(lambda: defaultdict(list))
    for kind, _, schema, _ in described:
        for column in schema.columns:
            types[column.name][column.type].append(kind.table)
    shared = {name for name, by_type in types.items() if sum(len(t) for t in by_type.values()) > 1}
    assert {"opened", "opportunity", "company_id", "lead_id", "assigned_by_id"} <= shared
    assert {name: dict(by_type) for name, by_type in types.items() if len(by_type) > 1} == {}


def test_the_portals_records_fit_those_types_without_a_value_nulled(described) -> None:
    for kind, _, schema, records in described:
        assert records, kind.table
        frame, coercions = frame_and_coercions(kind, schema, records)
        assert coercions.counts == {}, kind.table
        for column in schema.columns:
            if column.type is ColumnType.BOOLEAN:
                assert str(frame[column.name].dtype) == "boolean"
            if column.type is ColumnType.DECIMAL:
                assert str(frame[column.name].dtype) == "decimal128(18, 2)[pyarrow]"
            if column.type is ColumnType.INTEGER:
                assert str(frame[column.name].dtype) == "Int64"
        flags = [c.name for c in schema.columns if c.type is ColumnType.BOOLEAN]
        assert frame[flags].notna().any().any(), kind.table  # the flags hold values, not just NULLs


def test_snake_case_meets_across_styles() -> None:
    # The money rule is keyed by column name: legacy and crm.item spellings must land on one name.
    assert snake_case("OPPORTUNITY") == snake_case("opportunity")
    assert snake_case("TAX_VALUE") == snake_case("taxValue")
