"""Schema evolution on both engines: portal admins add and change user fields (UF_CRM_*) at any
time; a new field becomes a column without losing a row, a changed type is migrated in place (values
that do not convert become NULL and stay in ``_raw``) or, where no conversion exists, reported
instead of crashing the sync, and nothing is ever dropped. Tables loaded before issue 10's consistent
types (Y/N flags as text, amounts as double, reference ids as text) migrate on both engines."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from connectors.tables import ColumnSpec, ColumnType
from connectors.warehouse import SchemaChanges, TypeConflict, Warehouse
from tests.warehouse.entities import PORTAL, deal_frame, deals_schema, later

BUDGET = ColumnSpec("uf_crm_budget", ColumnType.INTEGER, "UF_CRM_BUDGET", "Budget", is_user_field=True)


def columns(warehouse: Warehouse, relation: str) -> list[str]:
    return [row[0] for row in warehouse.query(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = %(schema)s AND table_name = %(table)s ORDER BY ordinal_position",
        {"schema": getattr(warehouse, "schema", "main"), "table": relation})]


def test_ensure_table_creates_table_history_and_current_view(warehouse: Warehouse) -> None:
    changes = warehouse.ensure_table(deals_schema())

    assert changes == SchemaChanges("deals", created=True)
    assert columns(warehouse, "deals")[:3] == ["portal", "id", "title"]
    assert "_valid_to" in columns(warehouse, "deals_history")
    assert "_deleted_at" not in columns(warehouse, "deals_current")
    assert warehouse.ensure_table(deals_schema()) == SchemaChanges("deals")


def test_a_new_user_field_adds_a_column_and_keeps_every_row(warehouse: Warehouse) -> None:
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, deals_schema(), deal_frame([1, 2]))

    evolved = deals_schema(BUDGET)
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, evolved, deal_frame([3], extra={"uf_crm_budget": [500]}))

    for relation in ("deals", "deals_history", "deals_current"):
        assert columns(warehouse, relation)[-1] == "uf_crm_budget"
    assert warehouse.query(f"SELECT id, uf_crm_budget FROM {warehouse.relation('deals_current')} ORDER BY id") == [
        (1, None), (2, None), (3, 500)]


def test_a_new_user_field_added_by_a_rolled_back_transaction_is_added_again(warehouse: Warehouse) -> None:
    evolved = deals_schema(BUDGET)
    with pytest.raises(RuntimeError), warehouse.transaction() as tx:
        tx.upsert(PORTAL, evolved, deal_frame([1], extra={"uf_crm_budget": [1]}))
        raise RuntimeError("injected failure")

    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, evolved, deal_frame([1], extra={"uf_crm_budget": [2]}))

    assert warehouse.query(f"SELECT uf_crm_budget FROM {warehouse.relation('deals')}") == [(2,)]


def test_a_changed_field_type_without_a_conversion_is_reported_and_the_value_stays_in_raw(
        warehouse: Warehouse, caplog: pytest.LogCaptureFixture) -> None:
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, deals_schema(BUDGET), deal_frame([1], extra={"uf_crm_budget": [500]}))

    # The admin re-created the field as a date; a number has no date to become.
    retyped = deals_schema(ColumnSpec("uf_crm_budget", ColumnType.TIMESTAMP, "UF_CRM_BUDGET", "Budget"))
    with caplog.at_level(logging.WARNING):
        changes = warehouse.ensure_table(retyped)
    moment = later(5).isoformat()
    with warehouse.transaction() as tx:
        counts = tx.upsert(PORTAL, retyped, deal_frame([1], modified=later(1), extra={"uf_crm_budget": [moment]}))

    [conflict] = changes.conflicts
    assert isinstance(conflict, TypeConflict) and changes.migrated == ()
    assert (conflict.column, conflict.schema_type) == ("uf_crm_budget", ColumnType.TIMESTAMP)
    assert "uf_crm_budget" in caplog.text
    assert counts.updated == 1
    [(budget, raw)] = warehouse.query(f"SELECT uf_crm_budget, CAST(_raw AS TEXT) FROM {warehouse.relation('deals')}")
    assert budget is None
    assert f'"UF_CRM_BUDGET":"{moment}"' in raw


def test_a_field_retyped_to_text_keeps_its_values_as_text(warehouse: Warehouse) -> None:
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, deals_schema(BUDGET), deal_frame([1], extra={"uf_crm_budget": [500]}))

    retyped = deals_schema(ColumnSpec("uf_crm_budget", ColumnType.TEXT, "UF_CRM_BUDGET", "Budget"))
    changes = warehouse.ensure_table(retyped)
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, retyped, deal_frame([2], extra={"uf_crm_budget": ["a lot"]}))

    assert [(m.column, m.schema_type) for m in changes.migrated] == [("uf_crm_budget", ColumnType.TEXT)]
    assert warehouse.query(f"SELECT id, uf_crm_budget FROM {warehouse.relation('deals')} ORDER BY id") == [
        (1, "500"), (2, "a lot")]


# How tables were typed before the consistent types: flags as text, amounts as double, ids as text.
LEGACY_TYPED = (
    ColumnSpec("opened", ColumnType.TEXT, "OPENED"),
    ColumnSpec("tax_value", ColumnType.DOUBLE, "TAX_VALUE"),
    ColumnSpec("lead_id", ColumnType.TEXT, "LEAD_ID"),
    ColumnSpec("uf_crm_amount", ColumnType.TEXT, "UF_CRM_AMOUNT", is_user_field=True),
)
CONSISTENT = (
    ColumnSpec("opened", ColumnType.BOOLEAN, "OPENED"),
    ColumnSpec("tax_value", ColumnType.DECIMAL, "TAX_VALUE"),
    ColumnSpec("lead_id", ColumnType.INTEGER, "LEAD_ID"),
    ColumnSpec("uf_crm_amount", ColumnType.DECIMAL, "UF_CRM_AMOUNT", is_user_field=True),
)
OLD_VALUES = {"opened": ["Y", "n", " 1 ", "maybe", None],
              "tax_value": [2.675, -2.675, 1e300, float("nan"), None],
              "lead_id": ["12", " 7 ", "abc", "99999999999999999999", ""],
              "uf_crm_amount": ["19.99", "1e3", "12345678901234567.00", "-.5", None]}


def catalog_types(warehouse: Warehouse, relation: str) -> dict[str, str]:
    return dict(warehouse.query(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = %(schema)s AND table_name = %(table)s",
        {"schema": getattr(warehouse, "schema", "main"), "table": relation}))


def test_columns_typed_before_consistent_types_migrate_in_place(warehouse: Warehouse) -> None:
    old = deals_schema(*LEGACY_TYPED)
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, old, deal_frame([1, 2, 3, 4, 5], extra=OLD_VALUES))

    new = deals_schema(*CONSISTENT)
    changes = warehouse.ensure_table(new)

    assert changes.conflicts == ()
    assert {m.column: m.schema_type for m in changes.migrated} == {c.name: c.type for c in CONSISTENT}
    for relation in ("deals", "deals_history", "deals_current"):
        types = catalog_types(warehouse, relation)
        assert types["opened"].lower() == "boolean" and types["lead_id"].lower() == "bigint", relation
        assert types["tax_value"].lower().startswith(("decimal", "numeric")), relation
    rows = warehouse.query(f"SELECT id, opened, tax_value, lead_id, uf_crm_amount, CAST(_raw AS TEXT) "
                           f"FROM {warehouse.relation('deals_current')} ORDER BY id")
    assert [row[:5] for row in rows] == [
        (1, True, Decimal("2.68"), 12, Decimal("19.99")),
        (2, False, Decimal("-2.68"), 7, None),  # "1e3": the migration takes plain numbers only
        (3, True, None, None, None),  # 1e300 and 17 digits before the point exceed DECIMAL(18, 2)
        (4, None, None, None, Decimal("-0.50")),
        (5, None, None, None, None)]
    assert '"OPENED":"maybe"' in rows[3][5] and '"LEAD_ID":"abc"' in rows[2][5]  # kept in _raw
    history = warehouse.query(f"SELECT id, opened, lead_id FROM {warehouse.relation('deals_history')} ORDER BY id")
    assert history == [(1, True, 12), (2, False, 7), (3, True, None), (4, None, None), (5, None, None)]

    # The next sync writes typed values into the migrated columns and versions them in the history.
    with warehouse.transaction() as tx:
        counts = tx.upsert(PORTAL, new, deal_frame([1], modified=later(1), extra={
            "opened": [False], "tax_value": [1.1], "lead_id": [13], "uf_crm_amount": [None]}))
    assert counts.updated == 1
    assert warehouse.query(f"SELECT opened, tax_value, lead_id FROM {warehouse.relation('deals')} WHERE id = 1") == [
        (False, Decimal("1.10"), 13)]
    assert warehouse.ensure_table(new) == SchemaChanges("deals")


def test_a_field_that_left_the_schema_keeps_its_column_and_values(warehouse: Warehouse) -> None:
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, deals_schema(BUDGET), deal_frame([1], extra={"uf_crm_budget": [500]}))
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, deals_schema(), deal_frame([2]))

    assert warehouse.query(f"SELECT id, uf_crm_budget FROM {warehouse.relation('deals')} ORDER BY id") == [
        (1, 500), (2, None)]


def test_column_titles_from_the_portal_become_column_comments(warehouse: Warehouse) -> None:
    title = "Budget 'Q3'; DROP TABLE deals; -- \\ Бюджет"
    schema = deals_schema(ColumnSpec("uf_crm_budget", ColumnType.INTEGER, "UF_CRM_BUDGET", title))
    warehouse.ensure_table(schema)

    if getattr(warehouse, "schema", None):
        comment_sql = ("SELECT col_description(to_regclass(%(relation)s), "
                       "(SELECT attnum FROM pg_attribute WHERE attrelid = to_regclass(%(relation)s) "
                       "AND attname = 'uf_crm_budget'))")
    else:
        comment_sql = ("SELECT comment FROM duckdb_columns() WHERE table_name = 'deals' "
                       "AND column_name = 'uf_crm_budget' AND %(relation)s IS NOT NULL")
    assert warehouse.query(comment_sql, {"relation": warehouse.relation("deals")}) == [(title,)]
    assert warehouse.query(f"SELECT count(*) FROM {warehouse.relation('deals')}") == [(0,)]


def test_entity_tables_lists_the_tables_with_history_and_nothing_else(warehouse: Warehouse) -> None:
    warehouse.ensure_table(deals_schema())
    warehouse.ensure_table(deals_schema(name="items_1038"))

    assert warehouse.entity_tables() == ["deals", "items_1038"]


def test_a_view_reading_a_retyped_column_does_not_block_the_migration(warehouse: Warehouse) -> None:
    # PostgreSQL refuses to retype a column a view reads; the analysts' views over the table and over
    # its current view are dropped for their publisher to create again, and the migration goes on.
    old = deals_schema(*LEGACY_TYPED)
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, old, deal_frame([1], extra={name: values[:1] for name, values in OLD_VALUES.items()}))
    namespace = getattr(warehouse, "schema", None)
    views = f"{namespace}_views" if namespace else "views"
    ddl = warehouse._execute  # an analyst's own DDL, as the warehouse's API has no verb for it
    ddl(f"CREATE SCHEMA IF NOT EXISTS {views}")
    ddl(f"CREATE VIEW {views}.open_deals AS SELECT id, opened FROM {warehouse.relation('deals')}")
    ddl(f"CREATE VIEW {views}.leads_of_deals AS SELECT lead_id FROM {warehouse.relation('deals_current')}")
    try:
        changes = warehouse.ensure_table(deals_schema(*CONSISTENT))
        assert {m.column for m in changes.migrated} == {c.name for c in CONSISTENT}
        assert warehouse.query(f"SELECT opened, lead_id FROM {warehouse.relation('deals_current')}") == [(True, 12)]
    finally:
        ddl(f"DROP SCHEMA {views} CASCADE")
