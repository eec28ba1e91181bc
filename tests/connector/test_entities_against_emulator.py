"""Reading entities from the emulator: fetch by ids, keyset scans, schemas and frames (real HTTP).

Fetching is ``@ID`` lists packed 50x50 per request; an id that does not come back (deleted) is
reported as not found, never as an error (DESIGN §3.4). The scan walks ``>ID`` keysets chained with
``$result`` inside a batch (facts §4.1, §5). Every kind's real records must convert to its frame.
"""

from __future__ import annotations

import pytest

from connectors.bitrix24 import (
    EntityRegistry,
    fetch_by_ids,
    fetch_changes,
    plan_changes,
    scan,
    table_schema,
    to_frame,
)
from connectors.bitrix24.queue_rows import QueueEvent, parse_timestamp
from connectors.tables import ColumnType
from emulator.testing import run_emulator
from tests.connector.conftest import user_changes


@pytest.fixture(scope="module")
def crm_emu():
    """More rows than one page (and than one batch command) of every kind, smart processes included."""
    with run_emulator(limits=False, counts={"deal": 130, "contact": 60, "company": 55, "lead": 51,
                                            "activity": 70, "item": 52}, smart_process_types=2) as running:
        yield running


def test_deleted_ids_come_back_as_not_found(crm_emu, oauth_client) -> None:
    client = oauth_client(crm_emu)
    deal = EntityRegistry.standard()["deal"]
    user_changes(crm_emu, "deal", "delete", [7, 8])
    crm_emu.reset_stats()
    result = fetch_by_ids(client, deal, [*range(1, 121), 99_999])
    assert result.not_found == (7, 8, 99_999)
    assert [int(r["ID"]) for r in result.records] == [i for i in range(1, 121) if i not in (7, 8)]
    truth = {row["id"]: row["fields"] for row in crm_emu.truth("deal") if not row["deleted"]}
    assert all(record == {k: truth[int(record["ID"])].get(k) for k in record} for record in result.records)
    assert crm_emu.stats()["http_requests"] == 1  # 121 ids = 3 commands, one batch


def test_a_plan_mixing_kinds_is_fetched_in_shared_batches(crm_emu, oauth_client) -> None:
    client = oauth_client(crm_emu)
    registry = EntityRegistry.discover(client)
    events = [QueueEvent(n, parse_timestamp("2026-01-01T00:00:00+03:00"), name, {"FIELDS": {"ID": i}}, "0" * 32)
              for n, (name, i) in enumerate([("ONCRMDEALUPDATE", 1), ("ONCRMCONTACTUPDATE", 2),
                                             ("ONCRMCOMPANYUPDATE", 3), ("ONCRMCONTACTDELETE", 4)])]
    plan = plan_changes(events, registry)
    crm_emu.reset_stats()
    fetched = fetch_changes(client, plan)
    assert crm_emu.stats()["http_requests"] == 1
    assert {key: [int(r["ID"]) for r in result.records] for key, result in fetched.items()} == {
        "deal": [1], "contact": [2], "company": [3]}
    assert plan.kinds["contact"].tombstone_ids == (4,)


@pytest.mark.parametrize("key", ["deal", "contact", "activity", "item"])
def test_the_keyset_scan_sees_every_live_entity_once_in_id_order(crm_emu, oauth_client, key: str) -> None:
    client = oauth_client(crm_emu)
    registry = EntityRegistry.discover(client)
    kind = next(k for k in registry if k.key.startswith(key))
    truth = sorted(row["id"] for row in crm_emu.truth(kind.key) if not row["deleted"])
    crm_emu.reset_stats()
    chunks = list(scan(client, kind))
    seen = [int(row[kind.id_field]) for chunk in chunks for row in chunk]
    assert seen == truth
    assert crm_emu.stats()["http_requests"] == 1  # fewer than 2,500 rows: one chained batch


def test_a_scan_can_resume_after_an_id_and_narrow_the_columns(crm_emu, oauth_client) -> None:
    client = oauth_client(crm_emu)
    deal = EntityRegistry.standard()["deal"]
    rows = [row for chunk in scan(client, deal, after_id=100, select=["ID", "DATE_MODIFY"]) for row in chunk]
    assert rows and all(set(row) == {"ID", "DATE_MODIFY"} and int(row["ID"]) > 100 for row in rows)


def test_smart_process_types_are_discovered(crm_emu, oauth_client) -> None:
    registry = EntityRegistry.discover(oauth_client(crm_emu))
    items = [kind for kind in registry if kind.value_style == "item"]
    assert len(items) == 2 and all(kind.entity_type_id >= 128 for kind in items)
    assert {kind.table for kind in items} == {f"items_{kind.entity_type_id}" for kind in items}


def test_every_kind_maps_to_a_schema_and_its_real_records_to_a_frame(crm_emu, oauth_client) -> None:
    client = oauth_client(crm_emu)
    for kind in EntityRegistry.discover(client):
        schema = table_schema(client, kind)
        records = next(scan(client, kind))
        frame = to_frame(kind, schema, records)
        assert len(frame) == len(records) > 0, kind.key
        assert frame["id"].is_monotonic_increasing and frame["_source_modified_at"].notna().all()
        assert list(frame.columns[3:]) == [column.name for column in schema.columns]
        if kind.value_style == "legacy" and kind.key != "activity":
            assert any(column.is_user_field for column in schema.columns), kind.key
    deal_schema = table_schema(client, EntityRegistry.standard()["deal"])
    assert deal_schema.column("opportunity").type is ColumnType.DECIMAL  # an amount (issue 10)
    assert deal_schema.column("date_modify").type is ColumnType.TIMESTAMP
    contact_schema = table_schema(client, EntityRegistry.standard()["contact"])
    assert contact_schema.column("phone").type is ColumnType.JSON
