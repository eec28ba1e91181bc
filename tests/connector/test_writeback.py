"""Write-back without echo: our own writes carry auth_connector and never come back as events.

Bitrix24 writes no queue row for a change made by the app with the connector key the handler was
bound with (facts §2.12); a user's change to the same records still is queued.
"""

from __future__ import annotations

from connectors.bitrix24 import EntityRegistry, OfflineQueue, WriteBack, fetch_by_ids
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
