"""Identifier safety on both engines: user fields are named by portal admins, so names that reach
SQL are validated and quoted. Hostile names (quotes, semicolons, unicode, very long) are rejected
before any statement runs; SQL keywords, which are valid names, are quoted and work."""

from __future__ import annotations

import pandas as pd
import pytest

from connectors.tables import ColumnSpec, ColumnType, InvalidIdentifier, TableSchema
from connectors.warehouse import FrameContractError, Warehouse, open_warehouse
from tests.warehouse.conftest import PG_DSN
from tests.warehouse.entities import PORTAL, deal_frame, deals_schema

HOSTILE_NAMES = [
    'uf_crm_1"; DROP TABLE deals; --',
    "uf_crm_1'",
    "uf_crm_1; select 1",
    "UF_CRM_UPPER",
    "uf_crm_бюджет",
    "uf crm space",
    "1_starts_with_digit",
    "",
    "x" * 64,
]


def tables(warehouse: Warehouse) -> list[str]:
    return sorted(row[0] for row in warehouse.query(
        "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'deal%%'"
        " AND table_schema = %(schema)s", {"schema": getattr(warehouse, "schema", "main")}))


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_column_names_are_rejected_by_the_contract(name: str) -> None:
    with pytest.raises(InvalidIdentifier):
        ColumnSpec(name, ColumnType.TEXT, name.upper())


@pytest.mark.parametrize("name", HOSTILE_NAMES[:3])
def test_a_hostile_name_that_bypassed_the_contract_is_rejected_before_any_sql(
        warehouse: Warehouse, name: str) -> None:
    spec = ColumnSpec("uf_crm_placeholder", ColumnType.TEXT, "UF_CRM_PLACEHOLDER")
    object.__setattr__(spec, "name", name)  # as if a schema were built without validation
    schema = TableSchema("deals", (spec,))

    with pytest.raises(InvalidIdentifier):
        warehouse.ensure_table(schema)

    assert tables(warehouse) == []


@pytest.mark.parametrize("keyword", ["select", "order", "from", "group", "user", "table", "default", "at"])
def test_sql_keywords_as_column_names_are_quoted_and_work(warehouse: Warehouse, keyword: str) -> None:
    schema = deals_schema(ColumnSpec(keyword, ColumnType.TEXT, keyword.upper(), "Keyword"))
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, schema, deal_frame([1], extra={keyword: ["value"]}))
        tx.upsert(PORTAL, schema, deal_frame([1], stage="WON", extra={keyword: ["changed"]}))

    assert warehouse.query(f'SELECT "{keyword}" FROM {warehouse.relation("deals_current")}') == [("changed",)]


def test_the_longest_valid_column_name_works_and_one_more_character_is_rejected(warehouse: Warehouse) -> None:
    longest = "uf_crm_" + "x" * 56
    schema = deals_schema(ColumnSpec(longest, ColumnType.INTEGER, longest.upper()))
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, schema, deal_frame([1], extra={longest: [1]}))

    assert warehouse.query(f'SELECT "{longest}" FROM {warehouse.relation("deals")}') == [(1,)]
    with pytest.raises(InvalidIdentifier):
        ColumnSpec(longest + "x", ColumnType.INTEGER, "X")


def test_a_table_name_too_long_for_its_history_twin_is_rejected_cleanly(warehouse: Warehouse) -> None:
    # PostgreSQL would silently truncate "<56 characters>_history" to 63 bytes.
    schema = TableSchema("items_" + "x" * 50, ())

    with pytest.raises(InvalidIdentifier, match="_history"):
        warehouse.ensure_table(schema)


def test_hostile_portal_keys_and_reasons_are_bound_as_values(warehouse: Warehouse) -> None:
    portal = "x'); DROP TABLE deals; --"
    with warehouse.transaction() as tx:
        tx.upsert(portal, deals_schema(), deal_frame([1]))
        tx.tombstone(portal, "deals", [1], "it's gone'; --")

    assert warehouse.query(f"SELECT portal, _deleted_reason FROM {warehouse.relation('deals')}") == [
        (portal, "it's gone'; --")]


def test_frame_columns_outside_the_schema_are_rejected(warehouse: Warehouse) -> None:
    frame = deal_frame([1])
    frame['evil"; DROP TABLE deals; --'] = ["x"]

    with pytest.raises(FrameContractError, match="not in the schema"), warehouse.transaction() as tx:
        tx.upsert(PORTAL, deals_schema(), frame)


def test_a_frame_missing_a_schema_column_is_rejected(warehouse: Warehouse) -> None:
    with pytest.raises(FrameContractError, match="missing"), warehouse.transaction() as tx:
        tx.upsert(PORTAL, deals_schema(), deal_frame([1]).drop(columns=["stage_id"]))


def test_naive_timestamps_are_rejected(warehouse: Warehouse) -> None:
    frame = deal_frame([1])
    frame["date_modify"] = pd.Series([pd.Timestamp("2024-05-01 09:00")], dtype="datetime64[ns]")

    with pytest.raises(FrameContractError, match="naive"), warehouse.transaction() as tx:
        tx.upsert(PORTAL, deals_schema(), frame)


@pytest.mark.postgres
@pytest.mark.parametrize("schema", ['bitrix24"; DROP SCHEMA public; --', "Bitrix", "x" * 64])
def test_a_hostile_postgres_schema_name_is_rejected(schema: str) -> None:
    with pytest.raises(InvalidIdentifier):
        open_warehouse(PG_DSN, schema=schema)
