"""Deal product rows follow their deal, on both warehouses.

The first run reads the rows of every deal (50 deals per request); after that, only deals the CDC
loop wrote since are re-read: rows replaced when a deal's rows change (which updates the deal, so its
event brings it to the warehouse), gone when the deal is deleted. A crash between reading and
committing (an exception at the failpoint) loses nothing on the next run. The emulator's
``crm.item.productrow.*`` answers in the documented shape.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from connectors.bitrix24 import Bitrix24Client
from connectors.sync import reference as reference_sync
from connectors.sync.portal import PortalSync
from connectors.sync.reference import sync_product_rows
from connectors.sync.steps import run_once
from connectors.warehouse.sql_warehouse import SqlWarehouse
from emulator.crm.origin import Origin
from emulator.crm.product_rows import set_product_rows
from emulator.testing import ThreadEmulator
from tests.reference.conftest import PORTAL


def emulator_rows(emu: ThreadEmulator) -> set[tuple[int, int, str, float]]:
    crm = emu.world.portal("default").crm
    with crm.portal.lock:
        return {(row["id"], deal_id, row["productName"], row["quantity"])
                for deal_id, rows in crm.product_rows.by_deal.items() if deal_id in crm.table("deal").rows
                for row in rows}


def stored_rows(warehouse: SqlWarehouse) -> list[tuple[int, int, str, float]]:
    return [(int(row_id), int(owner), name, float(quantity)) for row_id, owner, name, quantity in warehouse.query(
        f"SELECT id, owner_id, product_name, quantity FROM {warehouse.relation('deal_product_rows')} "
        "WHERE portal = %(portal)s ORDER BY id", {"portal": PORTAL})]


def sync_deals(client: Bitrix24Client, warehouse: SqlWarehouse, staging: Path, mode: str) -> None:
    run_once(PortalSync(PORTAL, client, warehouse, staging / mode), mode)


def test_product_rows_follow_their_deal(emu: ThreadEmulator, client: Bitrix24Client, warehouse: SqlWarehouse,
                                        tmp_path: Path) -> None:
    sync_deals(client, warehouse, tmp_path, "full_resync")
    first = sync_product_rows(client, warehouse, PORTAL)
    deals = len(emu.world.portal("default").crm.table("deal").ids)
    assert first.deals == deals and first.requests == -(-deals // 50)
    assert set(stored_rows(warehouse)) == emulator_rows(emu) and first.rows == len(emulator_rows(emu))

    crm = emu.world.portal("default").crm
    set_product_rows(crm, 4, [{"productId": 9, "productName": "Audit", "price": 50, "quantity": 7}], Origin(user_id=2))
    set_product_rows(crm, 5, [], Origin(user_id=2))
    crm.write("deal", "delete", 6, None, Origin(user_id=2))
    sync_deals(client, warehouse, tmp_path, "changes")
    emu.reset_stats()
    second = sync_product_rows(client, warehouse, PORTAL, overlap=timedelta(0))

    assert second.deals == 2 and emu.stats()["http_requests"] == 1  # deals 4 and 5; 6 is gone
    stored = stored_rows(warehouse)
    assert len(stored) == len(set(stored)) and set(stored) == emulator_rows(emu)
    assert [(name, quantity) for _, owner, name, quantity in stored if owner == 4] == [("Audit", 7.0)]
    assert not [row for row in stored if row[1] in (5, 6)]
    # With the default overlap recent deals are read again: more requests, the same rows.
    sync_product_rows(client, warehouse, PORTAL)
    assert stored_rows(warehouse) == stored


def test_a_crash_before_the_commit_rereads_the_same_deals(emu: ThreadEmulator, client: Bitrix24Client,
                                                          warehouse: SqlWarehouse, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sync_deals(client, warehouse, tmp_path, "full_resync")
    sync_product_rows(client, warehouse, PORTAL)
    crm = emu.world.portal("default").crm
    set_product_rows(crm, 2, [{"productId": 1, "productName": "Retainer", "price": 10, "quantity": 3}],
                     Origin(user_id=2))
    sync_deals(client, warehouse, tmp_path, "changes")

    def crash(name: str) -> None:
        if name == "product_rows_fetched":
            raise KeyboardInterrupt("killed after reading product rows")

    monkeypatch.setattr(reference_sync, "failpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        sync_product_rows(client, warehouse, PORTAL)
    monkeypatch.undo()
    again = sync_product_rows(client, warehouse, PORTAL)

    assert again.deals >= 1
    stored = stored_rows(warehouse)
    assert len(stored) == len(set(stored)) and set(stored) == emulator_rows(emu)


def test_the_emulator_lists_product_rows_in_the_documented_shape(emu: ThreadEmulator) -> None:
    crm = emu.world.portal("default").crm
    set_product_rows(crm, 3, [{"productId": 2, "productName": "A", "price": 1, "quantity": 1},
                              {"productId": 3, "productName": "B", "price": 2, "quantity": 2}], Origin(user_id=2))
    with httpx.Client() as http:
        answer = http.post(emu.webhook_url + "crm.item.productrow.list",
                           json={"filter": {"=ownerType": "D", "=ownerId": 3}}).json()
        missing = http.post(emu.webhook_url + "crm.item.productrow.list", json={"filter": {"=ownerId": 3}})
    rows = answer["result"]["productRows"]
    assert answer["total"] == 2 and [row["productName"] for row in rows] == ["A", "B"]
    assert rows[0]["ownerType"] == "D" and rows[0]["ownerId"] == 3 and isinstance(rows[0]["price"], float)
    assert missing.status_code == 400 and missing.json()["error"] == "REQUIRED_ARG_MISSING"
