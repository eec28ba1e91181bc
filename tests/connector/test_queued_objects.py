"""`OfflineQueue.queued_objects`: which objects still have a queue row, read-only, over loopback.

Reconciliation must not call a change drift while it is on its way (facts §2.8: ``event.offline.list``
shows every row of the connector's queue, reserved or not, error lane included). The listing pages
by ``>ID`` 50 rows at a time, chained inside a batch, so more than one page must come back whole.
"""

from __future__ import annotations

from connectors.bitrix24 import EntityRegistry, OfflineQueue
from tests.connector.conftest import user_changes

CONNECTOR = "warehouse"
KINDS = EntityRegistry.standard().subset(["deal", "contact", "company"])


def test_every_queued_object_is_listed_by_kind_reserved_or_parked_without_taking_anything(
        emu, oauth_client) -> None:
    queue = OfflineQueue(oauth_client(emu), CONNECTOR)
    queue.bind(KINDS)
    user_changes(emu, "deal", "update", [1])
    parked = queue.reserve()
    queue.fail(parked.process_ids[0], [event.message_id for event in parked.events])
    user_changes(emu, "contact", "update", [2, 3])
    reserved = queue.reserve()
    user_changes(emu, "deal", "update", list(range(2, 21)))
    user_changes(emu, "deal", "delete", [20])
    user_changes(emu, "company", "update", [1, 2, 3, 4, 5])
    user_changes(emu, "contact", "update", list(range(4, 11)))
    user_changes(emu, "deal", "add", count=100)
    rows_before = emu.queue()
    assert len(rows_before) > 2 * 50  # three pages of 50

    queued = queue.queued_objects(KINDS)

    assert queued == {"deal": frozenset(range(1, 121)), "contact": frozenset(range(2, 11)),
                      "company": frozenset(range(1, 6))}
    assert emu.queue() == rows_before  # nothing reserved, cleared or re-marked
    assert reserved.process_ids and all(row["PROCESS_ID"] for row in rows_before
                                        if row["EVENT_NAME"] == "ONCRMCONTACTUPDATE"
                                        and row["EVENT_DATA"]["FIELDS"]["ID"] in (2, 3))
