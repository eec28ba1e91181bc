"""Reference data from the emulator into both warehouses: every dimension loads, a refresh picks up
what changed on the portal, one refresh costs at most two HTTP requests, and the rows of a portal are
replaced atomically (other portals untouched, a failed refresh leaves the previous one)."""

from __future__ import annotations

import json

import pytest

from connectors.bitrix24 import Bitrix24Client
from connectors.bitrix24.reference import load_reference
from connectors.dimensions import DIMENSIONS
from connectors.sync.reference import refresh_reference
from connectors.warehouse.errors import WarehouseError
from connectors.warehouse.reference import replace_dimensions
from connectors.warehouse.sql_warehouse import SqlWarehouse
from emulator.portal import User
from emulator.testing import ThreadEmulator
from tests.reference.conftest import PORTAL


def rows(warehouse: SqlWarehouse, sql: str, **params) -> list[tuple]:
    return warehouse.query(sql.format(**{name: warehouse.relation(name) for name in
                                         ("users", "departments", "crm_statuses", "crm_categories", "crm_types",
                                          "currencies", "user_fields", "user_field_enums", "columns")}), params)


def test_every_dimension_loads_what_the_portal_has(emu: ThreadEmulator, client: Bitrix24Client,
                                                   warehouse: SqlWarehouse) -> None:
    portal = emu.world.portal("default")
    refresh = refresh_reference(client, warehouse, PORTAL, publish=False)

    assert set(refresh.rows) == {dimension.name for dimension in DIMENSIONS}
    assert rows(warehouse, "SELECT user_id, full_name, active, department_id FROM {users} ORDER BY 1") == [
        (user.id, user.name, user.active, user.departments[0]) for user in sorted(portal.users.values(),
                                                                                   key=lambda u: u.id)]
    reference = portal.crm.reference
    assert rows(warehouse, "SELECT department_id, name, parent_id FROM {departments} ORDER BY 1") == [
        (d.id, d.name, d.parent) for d in sorted(reference.departments.values(), key=lambda d: d.id)]
    stages = rows(warehouse, "SELECT status_id, name, semantics, category_id FROM {crm_statuses} "
                             "WHERE entity_type_id = 2 ORDER BY category_id, sort")
    expected = [(pipeline.stage_id(stage.code), stage.name, stage.semantics, pipeline.id)
                for pipeline in reference.categories(2) for stage in pipeline.stages]
    assert stages == expected
    assert rows(warehouse, "SELECT entity_type_id, category_id, name, is_default FROM {crm_categories} "
                           "ORDER BY 1, 2") == [(2, 0, "Sales", True), (2, 1, "Partners", False),
                                                (2, 2, "Tenders", False), (128, 11, "General", True)]
    assert rows(warehouse, "SELECT entity_type_id, title, table_name FROM {crm_types}") == [
        (128, "Smart process 1", "items_128")]
    assert rows(warehouse, "SELECT currency_id, is_base FROM {currencies} ORDER BY sort") == [
        ("USD", True), ("EUR", False), ("RUB", False)]
    assert rows(warehouse, "SELECT item_id, value FROM {user_field_enums} WHERE table_name = 'deals' "
                           "ORDER BY sort") == [("601", "SMB"), ("602", "Mid-market"), ("603", "Enterprise")]
    [(label, enumeration)] = rows(warehouse, "SELECT label, enumeration FROM {columns} "
                                             "WHERE table_name = 'deals' AND column_name = 'uf_crm_1700000000006'")
    assert label == "Segment"
    enumeration = enumeration if isinstance(enumeration, dict) else json.loads(enumeration)
    assert enumeration == {"601": "SMB", "602": "Mid-market", "603": "Enterprise"}
    assert rows(warehouse, "SELECT label FROM {columns} WHERE table_name = 'deals' AND column_name = 'stage_id'") == [
        ("Deal stage",)]
    assert rows(warehouse, "SELECT label, user_type_id FROM {user_fields} WHERE table_name = 'items_128' "
                           "AND field_name = 'UF_CRM_1_1700000000103'") == [("Urgent", "boolean")]


def test_a_refresh_picks_up_a_new_stage_a_renamed_user_a_new_list_item_and_a_new_field(
        emu: ThreadEmulator, client: Bitrix24Client, warehouse: SqlWarehouse) -> None:
    refresh_reference(client, warehouse, PORTAL, publish=False)
    portal = emu.world.portal("default")
    crm = portal.crm
    with portal.lock:
        stage_id = crm.reference.add_stage(1, "AUDIT", "Partner audit")
        portal.users[5].name = "Elena Smirnova"
    crm.set_enum_values("deal", "UF_CRM_1700000000006", ("SMB", "Mid-market", "Enterprise", "Government"))
    crm.add_user_field("contact", "HOBBY", "string", label="Hobby")

    refresh_reference(client, warehouse, PORTAL, publish=False)

    assert rows(warehouse, "SELECT name, semantics FROM {crm_statuses} WHERE entity_id = 'DEAL_STAGE_1' "
                           "AND status_id = %(stage)s", stage=stage_id) == [("Partner audit", "P")]
    assert rows(warehouse, "SELECT full_name FROM {users} WHERE user_id = 5") == [("Elena Smirnova",)]
    assert rows(warehouse, "SELECT value FROM {user_field_enums} WHERE field_name = 'UF_CRM_1700000000006' "
                           "ORDER BY sort") == [("SMB",), ("Mid-market",), ("Enterprise",), ("Government",)]
    assert rows(warehouse, "SELECT label FROM {user_fields} WHERE field_name = 'UF_CRM_HOBBY'") == [("Hobby",)]
    assert rows(warehouse, "SELECT label FROM {columns} WHERE table_name = 'contacts' "
                           "AND column_name = 'uf_crm_hobby'") == [("Hobby",)]
    # Replaced, not appended: one row per key.
    assert rows(warehouse, "SELECT count(*) FROM {users}") == [(len(portal.users),)]


def test_one_refresh_costs_at_most_two_requests_even_with_more_than_fifty_users(
        emu: ThreadEmulator, client: Bitrix24Client, warehouse: SqlWarehouse) -> None:
    portal = emu.world.portal("default")
    with portal.lock:
        for user_id in range(100, 230):
            portal.users[user_id] = User(user_id, f"Agent Number{user_id}", active=user_id % 5 != 0,
                                         departments=(3,))
    emu.reset_stats()
    refresh = refresh_reference(client, warehouse, PORTAL, publish=False)

    assert emu.stats()["http_requests"] == refresh.requests <= 2
    assert rows(warehouse, "SELECT count(*), count(*) FILTER (WHERE NOT active) FROM {users}") == [
        (len(portal.users), sum(1 for user in portal.users.values() if not user.active))]


def test_portals_are_replaced_separately_and_a_bad_frame_changes_nothing(
        emu: ThreadEmulator, client: Bitrix24Client, warehouse: SqlWarehouse) -> None:
    reference = load_reference(client)
    replace_dimensions(warehouse, "first.bitrix24.com", reference.frames)
    replace_dimensions(warehouse, "second.bitrix24.com", reference.frames)
    users = len(reference.frames["users"])

    broken = {**reference.frames, "users": reference.frames["users"].head(2),
              "currencies": reference.frames["currencies"].drop(columns=["rate"])}
    with pytest.raises(WarehouseError, match="currencies"):
        replace_dimensions(warehouse, "second.bitrix24.com", broken)

    assert rows(warehouse, "SELECT portal, count(*) FROM {users} GROUP BY portal ORDER BY portal") == [
        ("first.bitrix24.com", users), ("second.bitrix24.com", users)]
