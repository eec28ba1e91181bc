"""Schema evolution on both engines: portal admins add and change user fields (UF_CRM_*) at any
time; a new field becomes a column without losing a row, a changed type is reported instead of
crashing the sync, and nothing is ever dropped."""

from __future__ import annotations

import logging

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


def test_a_changed_field_type_is_reported_and_the_value_stays_in_raw(
        warehouse: Warehouse, caplog: pytest.LogCaptureFixture) -> None:
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, deals_schema(BUDGET), deal_frame([1], extra={"uf_crm_budget": [500]}))

    # The admin re-created the field as a string; it arrives as text now.
    retyped = deals_schema(ColumnSpec("uf_crm_budget", ColumnType.TEXT, "UF_CRM_BUDGET", "Budget"))
    with caplog.at_level(logging.WARNING):
        changes = warehouse.ensure_table(retyped)
    with warehouse.transaction() as tx:
        counts = tx.upsert(PORTAL, retyped, deal_frame([1], modified=later(1), extra={"uf_crm_budget": ["a lot"]}))

    [conflict] = changes.conflicts
    assert isinstance(conflict, TypeConflict)
    assert (conflict.column, conflict.schema_type) == ("uf_crm_budget", ColumnType.TEXT)
    assert "uf_crm_budget" in caplog.text
    assert counts.updated == 1
    [(budget, raw)] = warehouse.query(f"SELECT uf_crm_budget, CAST(_raw AS TEXT) FROM {warehouse.relation('deals')}")
    assert budget is None
    assert '"UF_CRM_BUDGET":"a lot"' in raw


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
