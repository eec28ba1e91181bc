"""The analysts' schema, on both engines and in the DuckDB snapshot: current rows with names joined
in, dimensions and the column dictionary, the Bitrix24 labels as column comments, a deal "as of" a
moment, and nothing internal (journal, sync log, error lane, marks, ``_raw`` or other ``_`` columns)."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb

from connectors.bitrix24 import Bitrix24Client, schema_from_fields
from connectors.dimensions import DIMENSIONS
from connectors.sync.portal import PortalSync
from connectors.sync.reference import refresh_reference, sync_stage_history
from connectors.sync.steps import run_once
from connectors.tables import ColumnType
from connectors.warehouse.analytics import analytics_schema
from connectors.warehouse.duckdb_warehouse import DuckDBWarehouse
from connectors.warehouse.sql_warehouse import SqlWarehouse
from emulator.crm.origin import Origin
from emulator.testing import ThreadEmulator
from tests.reference.conftest import PORTAL


def load_everything(client: Bitrix24Client, warehouse: SqlWarehouse, tmp_path: Path, mode: str = "full_resync") -> None:
    run_once(PortalSync(PORTAL, client, warehouse, tmp_path / "staging" / mode), mode)
    refresh = refresh_reference(client, warehouse, PORTAL)
    sync_stage_history(client, warehouse, PORTAL, refresh.smart_process_types)


def relations(warehouse: SqlWarehouse, schema: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for table, column in warehouse.query(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %(schema)s "
            "ORDER BY table_name, ordinal_position", {"schema": schema}):
        found.setdefault(table, []).append(column)
    return found


def test_the_analysts_schema_holds_no_internal_table_and_no_underscore_column(
        client: Bitrix24Client, warehouse: SqlWarehouse, tmp_path: Path) -> None:
    load_everything(client, warehouse, tmp_path)
    schema = analytics_schema(warehouse)
    found = relations(warehouse, schema)

    entity_tables = set(warehouse.entity_tables())
    assert set(found) == entity_tables | {dimension.name for dimension in DIMENSIONS} | {"stage_history",
                                                                                           "deal_product_rows"}
    assert {"deals", "contacts", "companies", "leads", "activities", "items_128"} <= entity_tables
    assert not [f"{table}.{column}" for table, columns in found.items() for column in columns
                if column.startswith("_")]
    assert "uf_crm_1700000000006_label" in found["deals"] and "smart_process" in found["items_128"]


def test_deals_carry_stage_pipeline_manager_department_and_list_item_names(
        emu: ThreadEmulator, client: Bitrix24Client, warehouse: SqlWarehouse, tmp_path: Path) -> None:
    crm = emu.world.portal("default").crm
    crm.write("deal", "delete", 3, None, Origin(user_id=2))
    load_everything(client, warehouse, tmp_path)
    schema = analytics_schema(warehouse)
    users = emu.world.portal("default").users
    reference = crm.reference
    departments = reference.departments
    segments = dict(crm.table("deal").user_fields["UF_CRM_1700000000006"].items)

    stored = {row[0]: row[1:] for row in warehouse.query(
        f'SELECT id, stage_name, pipeline_name, assigned_by_name, assigned_by_department, '
        f'uf_crm_1700000000006_label FROM "{schema}".deals', {})}

    assert set(stored) == set(crm.table("deal").ids) and 3 not in stored
    for deal_id, row in crm.table("deal").rows.items():
        pipeline = reference.pipeline(int(row["CATEGORY_ID"]))
        stage = next(s for s in pipeline.stages if pipeline.stage_id(s.code) == row["STAGE_ID"])
        user = users[int(row["ASSIGNED_BY_ID"])]
        segment = row["UF_CRM_1700000000006"]
        assert stored[deal_id] == (stage.name, pipeline.name, user.name, departments[user.departments[0]].name,
                                   segments.get(int(segment)) if segment else None)
    [(title,)] = warehouse.query(f'SELECT DISTINCT smart_process FROM "{schema}".items_128', {})
    assert title == "Smart process 1"


def test_labels_are_column_comments_and_a_new_user_field_appears_after_a_refresh(
        emu: ThreadEmulator, client: Bitrix24Client, warehouse: SqlWarehouse, tmp_path: Path) -> None:
    load_everything(client, warehouse, tmp_path)
    crm = emu.world.portal("default").crm
    crm.add_user_field("deal", "REGION", "enumeration", label="Region", items=("North", "South"))
    north = crm.table("deal").user_fields["UF_CRM_REGION"].items[0][0]
    crm.write("deal", "update", 2, {"UF_CRM_REGION": str(north)}, Origin(user_id=2))
    load_everything(client, warehouse, tmp_path, mode="changes")
    schema = analytics_schema(warehouse)

    if isinstance(warehouse, DuckDBWarehouse):
        comments = dict(warehouse.query(
            "SELECT column_name, comment FROM duckdb_columns() WHERE schema_name = %(schema)s "
            "AND table_name = 'deals'", {"schema": schema}))
    else:
        comments = dict(warehouse.query(
            "SELECT a.attname, col_description(a.attrelid, a.attnum) FROM pg_attribute AS a "
            "WHERE a.attrelid = to_regclass(%(relation)s) AND a.attnum > 0", {"relation": f'"{schema}".deals'}))
    assert comments["stage_id"] == "Deal stage" and comments["stage_name"] == "Stage"
    assert comments["uf_crm_1700000000006"] == "Segment" and comments["uf_crm_region"] == "Region"
    assert comments["uf_crm_region_label"] == "Region (list item)"
    assert warehouse.query(f'SELECT uf_crm_region_label FROM "{schema}".deals WHERE id = 2', {}) == [("North",)]


def test_a_deal_as_of_a_moment_shows_the_version_valid_then(
        emu: ThreadEmulator, client: Bitrix24Client, warehouse: SqlWarehouse, tmp_path: Path) -> None:
    load_everything(client, warehouse, tmp_path)
    crm = emu.world.portal("default").crm
    before = crm.table("deal").rows[5]["TITLE"]
    time.sleep(1.1)
    between = datetime.now(UTC)
    time.sleep(1.1)
    crm.write("deal", "update", 5, {"TITLE": "Renegotiated"}, Origin(user_id=2))
    load_everything(client, warehouse, tmp_path, mode="changes")
    schema = analytics_schema(warehouse)

    def title_at(moment: datetime) -> list[tuple]:
        return warehouse.query(f'SELECT title FROM "{schema}".deals_as_of(%(at)s) WHERE id = 5', {"at": moment})

    assert title_at(between) == [(before,)]
    assert title_at(datetime.now(UTC)) == [("Renegotiated",)]


def test_the_duckdb_snapshot_carries_the_analysts_schema(client: Bitrix24Client, tmp_path: Path) -> None:
    warehouse = DuckDBWarehouse(tmp_path / "warehouse.duckdb")
    try:
        load_everything(client, warehouse, tmp_path)
        snapshot = warehouse.publish_snapshot()
        expected = warehouse.query("SELECT count(*) FROM analytics.deals", {})
    finally:
        warehouse.close()
    with duckdb.connect(str(snapshot), read_only=True) as analyst:
        assert analyst.sql("SELECT count(*) FROM analytics.deals").fetchall() == expected
        assert analyst.sql("SELECT count(*) FROM analytics.deals_as_of(now())").fetchall() == expected
        assert analyst.sql("SELECT count(*) FROM analytics.stage_history WHERE stage_name IS NULL").fetchall() == [
            (0,)]


def test_a_column_type_migration_leaves_the_analysts_views_in_place_and_answering(
        emu: ThreadEmulator, client: Bitrix24Client, warehouse: SqlWarehouse, tmp_path: Path) -> None:
    # PostgreSQL refuses to retype a column a view reads, so the migration drops the analysts' views
    # over the table; they must come back in the migration's own transaction, not at the next refresh.
    load_everything(client, warehouse, tmp_path)
    schema = analytics_schema(warehouse)
    sync = PortalSync(PORTAL, client, warehouse, tmp_path / "staging" / "schema")
    deals = schema_from_fields(sync.registry["deal"], sync.fields(sync.registry["deal"]))
    assert deals.column("opportunity").type is ColumnType.DECIMAL
    retyped = replace(deals, columns=tuple(replace(column, type=ColumnType.TEXT) if column.name == "opportunity"
                                           else column for column in deals.columns))

    changes = warehouse.ensure_table(retyped)

    assert [migration.column for migration in changes.migrated] == ["opportunity"]
    view_types = dict(warehouse.query(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %(schema)s "
        "AND table_name = 'deals'", {"schema": schema}))
    assert view_types["opportunity"].lower() in ("text", "varchar", "character varying")
    assert "stage_name" in view_types and "uf_crm_1700000000006_label" in view_types
    truth = {deal_id: row for deal_id, row in emu.world.portal("default").crm.table("deal").rows.items()}
    stored = {row[0]: row[1:] for row in warehouse.query(
        f'SELECT id, opportunity, stage_name FROM "{schema}".deals', {})}
    assert set(stored) == set(truth)
    assert all(opportunity is None or Decimal(opportunity) == Decimal(str(truth[deal_id]["OPPORTUNITY"] or 0))
               for deal_id, (opportunity, _) in stored.items())
    assert all(stage_name for _, stage_name in stored.values())
    # The "as of" function declares the column types; it answers with the new one.
    as_of = warehouse.query(f'SELECT id, opportunity FROM "{schema}".deals_as_of(%(at)s)', {"at": datetime.now(UTC)})
    assert dict(as_of) == {deal_id: opportunity for deal_id, (opportunity, _) in stored.items()}
