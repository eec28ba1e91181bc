"""Background activity, ground truth and the list fast paths.

End-to-end tests compare the warehouse with the portal's ground truth while the activity generator
keeps changing the CRM; so the truth must include tombstones, generated writes must reach offline
queues like a UI user's, and the generator must hold roughly its rate. The connector's bulk reads
(``@ID`` lists, ``>ID`` keyset pages) must not cost a table scan, checked here by counting row reads.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import emulator.crm
from emulator.activity import ActivityGenerator
from emulator.crm.legacy_methods import legacy_query
from emulator.crm.query import run
from emulator.events import Origin
from emulator.portal import Portal, User


def test_generator_holds_its_rate_and_reports_writes_per_entity(emu):
    emu.start_activity(100, seed=5)
    time.sleep(1.0)
    stats = emu.stop_activity()
    writes = sum(sum(counts.values()) for counts in stats.values())
    assert 60 <= writes <= 140
    assert set(stats) <= {"deal", "contact", "company", "lead", "activity", "item:128"}
    assert all(set(counts) == {"add", "update", "delete"} for counts in stats.values())


def test_generated_writes_reach_offline_queues_as_a_users_changes(emu, tokens, http):
    for event in ("ONCRMDEALADD", "ONCRMDEALUPDATE", "ONCRMDEALDELETE"):
        response = http.post(f"{emu.url}/rest/event.bind",
                             json={"event": event, "event_type": "offline", "auth": tokens["access_token"]})
        assert response.json()["result"] is True
    emu.start_activity(200, mix={"deal": 1.0}, seed=11)
    time.sleep(0.5)
    stats = emu.stop_activity()
    rows = emu.queue()
    assert rows and {row["EVENT_NAME"] for row in rows} <= {"ONCRMDEALADD", "ONCRMDEALUPDATE", "ONCRMDEALDELETE"}
    # Writes come from the portal's active users; a fired user changes nothing any more.
    active = {str(user.id) for user in emu.world.portal("default").users.values() if user.active}
    assert {row["EVENT_ADDITIONAL"]["user_id"] for row in rows} <= active and "8" not in active
    updated = {row["EVENT_DATA"]["FIELDS"]["ID"] for row in rows if row["EVENT_NAME"] == "ONCRMDEALUPDATE"}
    # One row per changed object, however often the generator touched it.
    assert len(updated) == sum(row["EVENT_NAME"] == "ONCRMDEALUPDATE" for row in rows)
    assert stats["deal"]["update"] >= len(updated)


def test_ground_truth_lists_live_records_as_get_shows_them_and_tombstones(emu, http):
    emu.write("deal", "delete", id=4)
    new_id = emu.write("deal", "add", fields={"TITLE": "Brand new"})
    truth = {row["id"]: row for row in emu.truth("deal")}
    assert truth[4]["deleted"] is True and truth[4]["fields"] is None and truth[4]["modified"]
    fresh = truth[new_id]
    assert fresh["deleted"] is False and fresh["fields"]["TITLE"] == "Brand new"
    assert fresh["modified"] == fresh["fields"]["DATE_MODIFY"]
    assert fresh["fields"] == http.post(emu.webhook_url + "crm.deal.get", json={"id": new_id}).json()["result"]
    item = emu.truth("item:128")[0]
    assert item["fields"]["id"] == item["id"] and item["modified"] == item["fields"]["updatedTime"]


def test_generator_refuses_a_mix_naming_unknown_entities(emu):
    portal = emu.world.portal("default")
    with pytest.raises(LookupError):
        ActivityGenerator(portal, 10, {"invoice": 1.0})
    with pytest.raises(ValueError, match="unknown operation"):
        ActivityGenerator(portal, 10, {"deal.merge": 1.0})


class CountingRows(dict):
    """The table's row dict, counting how many rows a query reads."""

    reads = 0

    def __getitem__(self, key: Any) -> Any:
        CountingRows.reads += 1
        return super().__getitem__(key)


@pytest.fixture(scope="module")
def big_portal() -> Portal:
    portal = Portal("big")
    portal.users = {1: User(1, "Admin", True)}
    emulator.crm.attach(portal, 1, {"deal": 20_000})
    table = portal.crm.table("deal")
    table.rows = CountingRows(table.rows)
    return portal


def _reads_of(portal: Portal, filter_: dict[str, Any], order: dict[str, str], start: int) -> tuple[int, Any]:
    table = portal.crm.table("deal")
    CountingRows.reads = 0
    page = run(table, legacy_query(table, filter_, order, portal.crm.clock), start)
    return CountingRows.reads, page


def test_id_lists_and_keyset_pages_read_only_the_rows_they_return(big_portal):
    reads, page = _reads_of(big_portal, {"@ID": list(range(500, 550))}, {}, -1)
    assert page.ids == list(range(500, 550)) and reads == 0
    reads, page = _reads_of(big_portal, {">ID": 15_000}, {"ID": "ASC"}, -1)
    assert page.ids == list(range(15_001, 15_051)) and reads == 0 and page.total is None
    reads, page = _reads_of(big_portal, {">ID": 15_000, "STAGE_ID": "WON"}, {"ID": "ASC"}, -1)
    assert len(page.ids) == 50 and reads < 2_000
    reads, page = _reads_of(big_portal, {">ID": 19_990}, {"ID": "ASC"}, 0)
    assert page.total == 10 and reads == 0


def test_deleting_keeps_the_sorted_ids_consistent(big_portal):
    big_portal.crm.write("deal", "delete", 15_001, None, Origin(user_id=1))
    _, page = _reads_of(big_portal, {">ID": 15_000}, {"ID": "ASC"}, -1)
    assert page.ids[0] == 15_002
