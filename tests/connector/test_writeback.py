"""Write-back without echo: our own writes carry auth_connector and never come back as events.

Bitrix24 writes no queue row for a change made by the app with the connector key the handler was
bound with (facts §2.12); a user's change to the same records still is queued.
"""

from __future__ import annotations

import pytest

from connectors.bitrix24 import EntityRegistry, LoopAvoidanceUnavailable, OfflineQueue, WriteBack, fetch_by_ids
from tests.connector.conftest import user_changes


def test_a_write_back_with_auth_connector_produces_no_event(emu, oauth_client) -> None:
    client = oauth_client(emu)
    registry = EntityRegistry.discover(client)
    queue = OfflineQueue(client, "warehouse")
    queue.bind(registry)
    writer = WriteBack(queue)
    deal, item = registry["deal"], next(kind for kind in registry if kind.value_style == "item")

    new_ids = writer.add(deal, [{"TITLE": "From the warehouse"}, {"TITLE": "Second"}])
    writer.update(deal, {new_ids[0]: {"TITLE": "Scored", "OPPORTUNITY": "10.00"}, 1: {"COMMENTS": "churn 0.2"}})
    item_id = writer.add(item, [{"title": "Item from the warehouse"}])[0]
    writer.update(item, {item_id: {"title": "Renamed"}})

    assert queue.peek().depth == 0 and emu.queue() == []
    stored = fetch_by_ids(client, deal, new_ids)
    assert [r["TITLE"] for r in stored.records] == ["Scored", "Second"]

    user_changes(emu, "deal", "update", [new_ids[0]])
    assert queue.peek().depth == 1  # a person's change to the same deal is still seen


def test_without_the_connector_key_our_writes_would_come_back(emu, oauth_client) -> None:
    # The control: the same app writing under a different connector key is echoed into our queue.
    client = oauth_client(emu)
    deal = EntityRegistry.standard()["deal"]
    queue = OfflineQueue(client, "warehouse")
    queue.bind([deal])
    WriteBack(OfflineQueue(client, "someone-else")).add(deal, [{"TITLE": "echo"}])
    assert queue.peek().depth == 1


def test_push_answers_per_object_and_one_refusal_does_not_stop_the_others(emu, oauth_client) -> None:
    client = oauth_client(emu)
    lead = EntityRegistry.standard()["lead"]
    queue = OfflineQueue(client, "warehouse")
    queue.bind([lead])
    writer = WriteBack(queue)
    assert writer.require_loop_avoidance() == "warehouse"
    emu.world.portal("default").crm.add_user_field("lead", "SCORE", "double")

    answers = writer.push(lead, {1: {"UF_CRM_SCORE": 10.5}, 2: {"UF_CRM_SCORE": "n/a"}, 3: {"UF_CRM_SCORE": 7}})

    assert answers[1] is None and answers[3] is None
    assert answers[2] is not None and "UF_CRM_SCORE" in answers[2].description
    stored = {r["ID"]: r["UF_CRM_SCORE"] for r in fetch_by_ids(client, lead, [1, 2, 3]).records}
    assert stored == {"1": "10.50", "2": None, "3": "7.00"}
    assert queue.peek().depth == 0


def test_without_auth_connector_on_the_plan_nothing_may_be_written(emu, oauth_client) -> None:
    emu.patch_portal(plan="standard")
    writer = WriteBack(OfflineQueue(oauth_client(emu), "warehouse"))
    with pytest.raises(LoopAvoidanceUnavailable, match="WRONG_LICENSE"):
        writer.require_loop_avoidance()
    with pytest.raises(LoopAvoidanceUnavailable, match="no connector key"):
        WriteBack(OfflineQueue(oauth_client(emu), "")).require_loop_avoidance()
