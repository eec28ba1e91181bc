"""Restoring a deleted CRM object from the recycle bin, through the control API over loopback.

A restored object keeps its id and the fields it had, gets a new modification time, and is queued for
offline handlers as an ``ONCRM<ENTITY>ADD`` (the facts sheet names no restore event, §3; the emulator's
README records the assumption). Reconciliation and the change sync must see it come back.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from emulator.testing import ThreadEmulator

SMART_PROCESS = 128


def rest(http: httpx.Client, emu: ThreadEmulator, token: str, method: str, **params: Any) -> httpx.Response:
    return http.post(f"{emu.url}/rest/{method}", json={**params, "auth": token})


def result(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()["result"]


@pytest.fixture
def app(emu: ThreadEmulator, tokens: dict[str, Any], http: httpx.Client):
    """Calls as the default app, with deal and smart-process ADD/DELETE bound offline."""
    def call(method: str, **params: Any) -> httpx.Response:
        return rest(http, emu, tokens["access_token"], method, **params)

    for event in ("ONCRMDEALADD", "ONCRMDEALDELETE", "ONCRMDYNAMICITEMADD"):
        assert result(call("event.bind", event=event, event_type="offline")) is True
    return call


def test_a_restored_deal_keeps_its_id_and_fields_with_a_newer_modification_time(http, emu, app):
    before = result(app("crm.deal.get", id=4))
    emu.write("deal", "delete", 4)
    assert rest(http, emu, "", "crm.deal.get", id=4).status_code in (400, 401)
    assert result(app("crm.deal.get", id=5))["ID"] == "5"
    deleted_at = next(row for row in emu.truth("deal") if row["id"] == 4)["modified"]
    time.sleep(1.05)  # the restore lands in a later second than the delete

    assert emu.restore("deal", 4) == 4

    after = result(app("crm.deal.get", id=4))
    assert after["ID"] == "4" and after["TITLE"] == before["TITLE"]
    assert after["OPPORTUNITY"] == before["OPPORTUNITY"] and after["STAGE_ID"] == before["STAGE_ID"]
    assert datetime.fromisoformat(after["DATE_MODIFY"]) > datetime.fromisoformat(deleted_at)
    users = emu.control.get("portals/default").json()["users"]
    restorer = min(user["id"] for user in users if not user["is_admin"])  # the control API's UI user
    assert after["MODIFY_BY_ID"] == str(restorer)
    assert [row["ID"] for row in result(app("crm.deal.list", filter={"@ID": [3, 4, 5]}, select=["ID"]))] == [
        "3", "4", "5"]
    truth = next(row for row in emu.truth("deal") if row["id"] == 4)
    assert truth["deleted"] is False and truth["modified"] == after["DATE_MODIFY"]


def test_restoring_queues_the_add_event_stamped_with_the_restore(emu, app):
    emu.write("deal", "delete", 6)
    queued = result(app("event.offline.get", clear=1))["events"]
    assert [(row["EVENT_NAME"], row["EVENT_DATA"]["FIELDS"]["ID"]) for row in queued] == [("ONCRMDEALDELETE", 6)]

    emu.restore("deal", 6)

    [row] = result(app("event.offline.list"))
    assert row["EVENT_NAME"] == "ONCRMDEALADD" and row["EVENT_DATA"] == {"FIELDS": {"ID": 6}}
    assert row["TIMESTAMP_X"] == result(app("crm.deal.get", id=6))["DATE_MODIFY"]


def test_a_smart_process_item_restores_like_a_deal(emu, app):
    emu.write(f"item:{SMART_PROCESS}", "delete", 2)
    emu.restore(f"item:{SMART_PROCESS}", 2)
    item = result(app("crm.item.get", entityTypeId=SMART_PROCESS, id=2))["item"]
    assert item["id"] == 2
    names = [row["EVENT_NAME"] for row in result(app("event.offline.list"))]
    assert names == ["ONCRMDYNAMICITEMADD"]


def test_only_a_deleted_id_can_be_restored(emu):
    for missing in (3, 9999):  # live, and never existed
        response = emu.control.post(f"portals/default/crm/deal/{missing}/restore")
        assert response.status_code == 404 and "not found" in response.json()["error"]
    emu.write("deal", "delete", 3)
    emu.restore("deal", 3)
    assert emu.control.post("portals/default/crm/deal/3/restore").status_code == 404
