"""A smart process deleted in the portal: Bitrix24 deletes a type only once its items are deleted
(each item's ``ONCRMDYNAMICITEMDELETE`` queued first, then ``ONCRMTYPEDELETE``). Its rows in the
warehouse end tombstoned, its queue rows acknowledged, nothing parked or stuck, whether the run saw
the type event, its look-up cache still lists the type, or an item's row already sat in the error lane.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.bitrix24 import Bitrix24Client, FileTokenStore, RetryPolicy
from connectors.state import StateStore, open_state_store
from connectors.sync.portal import DEFAULT_CONNECTOR, PortalSync
from connectors.sync.reconcile import reconcile
from connectors.sync.steps import run_once
from connectors.warehouse import ParkedStatus
from emulator.crm.origin import Origin
from emulator.events import message_id
from emulator.testing import ThreadEmulator, run_emulator
from tests.sync.conftest import PORTAL, app_keys
from tests.warehouse.conftest import WarehouseTarget

TYPE_ID = 128  # the seeded portal's smart process
KIND = f"item:{TYPE_ID}"
TABLE = f"items_{TYPE_ID}"
FAST = RetryPolicy(attempts=3, backoff_base_s=0.05, backoff_max_s=0.2)
USER = Origin(user_id=2)


@pytest.fixture
def emu() -> Iterator[ThreadEmulator]:
    counts = {"deal": 10, "contact": 5, "company": 5, "lead": 5, "activity": 0, "item": 6}
    with run_emulator(limits=False, counts=counts, seed=5) as running:
        yield running


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateStore]:
    with open_state_store(tmp_path / "state.sqlite3") as store:
        yield store


def sync(emu: ThreadEmulator, tokens: FileTokenStore, target: WarehouseTarget, staging: Path, state: StateStore,
         mode: str = "changes") -> None:
    with Bitrix24Client(app_keys(emu).session(PORTAL, tokens), retry=FAST) as client, target.open() as warehouse:
        run_once(PortalSync(PORTAL, client, warehouse, staging, state=state), mode)


def live_items(target: WarehouseTarget, table: str = TABLE, portal: str = PORTAL) -> list[int]:
    with target.open() as warehouse:
        rows = warehouse.query(f"SELECT id FROM {warehouse.relation(table)} WHERE portal = %(p)s "
                               "AND _deleted_at IS NULL ORDER BY id", {"p": portal})
    return [row[0] for row in rows]


def queue_row(emu: ThreadEmulator, name: str, data: dict) -> None:
    """A row in our connector's queue with this payload, as the portal would have queued it."""
    events = emu.world.portals[PORTAL].events
    with events.portal.lock:
        events.queue(emu.client_id, DEFAULT_CONNECTOR).record(
            events._new_row_id, name, data, {"user_id": "2"}, message_id(name, data), events.clock.now())


def our_queue(emu: ThreadEmulator) -> list[str]:
    return [row["EVENT_NAME"] for row in emu.queue() if row["CONNECTOR_ID"] == DEFAULT_CONNECTOR]


def delete_the_type(emu: ThreadEmulator) -> list[int]:
    """A portal admin empties the smart process and deletes it; returns the item ids it had."""
    crm = emu.world.portals[PORTAL].crm
    ids = sorted(crm.table(KIND).rows)
    for entity_id in ids:
        crm.write(KIND, "delete", entity_id, None, USER)
    crm.delete_smart_process(TYPE_ID)
    return ids


def test_the_emulator_refuses_to_delete_a_type_with_items(emu: ThreadEmulator) -> None:
    with pytest.raises(ValueError, match="still has items"):
        emu.world.portals[PORTAL].crm.delete_smart_process(TYPE_ID)


def test_items_deleted_with_their_type_are_tombstoned_in_the_run_that_sees_the_type_event(
        emu, tokens, warehouse_target, state, tmp_path) -> None:
    sync(emu, tokens, warehouse_target, tmp_path / "full", state, "full_resync")
    ids = delete_the_type(emu)
    assert live_items(warehouse_target) == ids

    sync(emu, tokens, warehouse_target, tmp_path / "changes", state)

    assert live_items(warehouse_target) == []
    assert our_queue(emu) == []
    assert ledger_rows(warehouse_target) == []


@pytest.mark.parametrize("fields_cached", [True, False], ids=["list-not-found", "fields-not-found"])
def test_a_fetch_of_a_type_the_cache_still_lists_tombstones_its_items_instead_of_parking_them(
        fields_cached, emu, tokens, warehouse_target, state, tmp_path) -> None:
    """The type event was missed (or not bound): the cache lists the type, an item's latest queue row
    is an update, and the list (or, its fields not cached, ``crm.item.fields``) answers NOT_FOUND for
    the type. A type is deleted only when empty, so its items are gone: tombstoned, not parked for an
    error lane that would fail for ever, nor failing the run until the cache ages out."""
    sync(emu, tokens, warehouse_target, tmp_path / "full", state, "full_resync")
    if not fields_cached:
        state.forget_cached(PORTAL, [f"fields:{KIND}"])
    crm = emu.world.portals[PORTAL].crm
    ids = sorted(crm.table(KIND).rows)
    crm.write(KIND, "update", ids[0], {"title": "changed"}, USER)
    # Neither the item's deletion nor the type's reaches this connector's queue.
    emu.world.portals[PORTAL].events.unbind(lambda handler: handler.event == "ONCRMTYPEDELETE")
    with crm.portal.lock:
        crm.tables[KIND].rows.clear()
    crm.delete_smart_process(TYPE_ID)

    sync(emu, tokens, warehouse_target, tmp_path / "changes", state)

    assert ids[0] not in live_items(warehouse_target)
    assert our_queue(emu) == []
    assert ledger_rows(warehouse_target) == []


def test_reconcile_over_a_deleted_type_tombstones_its_rows(emu, tokens, warehouse_target, state, tmp_path) -> None:
    """Reconcile asks the types afresh: a type gone from the portal is no reason to fail, and the
    rows it left live (their delete events missed) are drift, repaired as deleted."""
    sync(emu, tokens, warehouse_target, tmp_path / "full", state, "full_resync")
    crm = emu.world.portals[PORTAL].crm
    ids = sorted(crm.table(KIND).rows)
    with crm.portal.lock:
        crm.tables[KIND].rows.clear()  # deleted without a trace in our queue
    crm.delete_smart_process(TYPE_ID)
    with Bitrix24Client(app_keys(emu).session(PORTAL, tokens), retry=FAST) as client, \
            warehouse_target.open() as warehouse:
        reports = reconcile(PortalSync(PORTAL, client, warehouse, tmp_path / "reconcile", state=state), repair=True)
    [report] = [report for report in reports if report.table == TABLE]
    assert (report.extra, report.portal_rows) == (len(ids), 0)
    assert live_items(warehouse_target) == []
    assert all(report.in_sync for report in reports if report.table != TABLE)


def ledger_rows(target: WarehouseTarget) -> list:
    with target.open() as warehouse:
        return warehouse.error_lane(PORTAL, ParkedStatus.PARKED)


def test_an_item_parked_before_its_type_was_deleted_leaves_the_error_lane_tombstoned(
        emu, tokens, warehouse_target, state, tmp_path) -> None:
    """An item refused once sits in the error lane; its type is then emptied and deleted with the
    type event missed. The next drain must not fail it for ever: the type is gone, so is the item."""
    sync(emu, tokens, warehouse_target, tmp_path / "full", state, "full_resync")
    crm = emu.world.portals[PORTAL].crm
    ids = sorted(crm.table(KIND).rows)
    crm.write(KIND, "update", ids[0], {"title": "refused for now"}, USER)
    emu.add_fault("crm.item.list", "access_denied")
    sync(emu, tokens, warehouse_target, tmp_path / "parked", state)
    assert [row.entity_id for row in ledger_rows(warehouse_target)] == [ids[0]]
    emu.clear_faults()
    emu.world.portals[PORTAL].events.unbind(lambda handler: handler.event == "ONCRMTYPEDELETE")
    with crm.portal.lock:
        crm.tables[KIND].rows.clear()
    crm.delete_smart_process(TYPE_ID)

    sync(emu, tokens, warehouse_target, tmp_path / "drain", state, "error_lane")

    assert ledger_rows(warehouse_target) == []
    assert ids[0] not in live_items(warehouse_target)
    assert our_queue(emu) == []


def test_a_full_resync_tombstones_the_rows_of_a_type_the_portal_no_longer_has(
        emu, tokens, warehouse_target, state, tmp_path) -> None:
    """A full resync makes the warehouse equal the portal: a deleted type's table keeps no live rows,
    whether the type was still in the look-up cache (asked again) or not."""
    sync(emu, tokens, warehouse_target, tmp_path / "full", state, "full_resync")
    crm = emu.world.portals[PORTAL].crm
    with crm.portal.lock:
        crm.tables[KIND].rows.clear()  # deleted without a trace in our queue
    emu.world.portals[PORTAL].events.unbind(lambda handler: handler.event == "ONCRMTYPEDELETE")
    crm.delete_smart_process(TYPE_ID)

    sync(emu, tokens, warehouse_target, tmp_path / "again", state, "full_resync")

    assert live_items(warehouse_target) == []
    assert our_queue(emu) == []


def test_a_type_event_whose_item_deletions_never_arrived_tombstones_the_types_rows(
        emu, tokens, warehouse_target, state, tmp_path) -> None:
    """Only ONCRMTYPEDELETE reaches the queue (the items' deletions were lost with their handlers):
    the run that asks the types again knows the type is gone, and with it its items."""
    sync(emu, tokens, warehouse_target, tmp_path / "full", state, "full_resync")
    crm = emu.world.portals[PORTAL].crm
    with crm.portal.lock:
        crm.tables[KIND].rows.clear()
    crm.delete_smart_process(TYPE_ID)
    assert our_queue(emu) == ["ONCRMTYPEDELETE"]

    sync(emu, tokens, warehouse_target, tmp_path / "changes", state)

    assert live_items(warehouse_target) == []
    assert our_queue(emu) == []


@pytest.mark.parametrize("name", ["ONCRMDYNAMICITEMUPDATE_999", "ONCRMDYNAMICITEMDELETE_128"])
def test_a_row_naming_two_types_tombstones_nothing(name, emu, tokens, warehouse_target, state, tmp_path) -> None:
    """A per-type event name and ENTITY_TYPE_ID that disagree, both or one of them a live type:
    which object it means is unknown, so it is acknowledged as unknown, never a deletion."""
    crm = emu.world.portals[PORTAL].crm
    crm.add_smart_process("Second", entity_type_id=130)
    item = crm.write("item:130", "add", None, {"title": "live"}, USER)
    sync(emu, tokens, warehouse_target, tmp_path / "full", state, "full_resync")
    before = live_items(warehouse_target)

    queue_row(emu, name, {"FIELDS": {"ID": str(item), "ENTITY_TYPE_ID": "130"}})
    sync(emu, tokens, warehouse_target, tmp_path / "changes", state)

    assert item in live_items(warehouse_target, "items_130")
    assert live_items(warehouse_target) == before
    assert our_queue(emu) == []


@pytest.mark.parametrize("type_id", [999, TYPE_ID], ids=["unlisted-type", "listed-type"])
def test_an_item_id_beyond_int64_is_acknowledged_as_unknown_not_failing_every_run(
        type_id, emu, tokens, warehouse_target, state, tmp_path) -> None:
    sync(emu, tokens, warehouse_target, tmp_path / "full", state, "full_resync")
    before = live_items(warehouse_target)
    queue_row(emu, "ONCRMDYNAMICITEMDELETE", {"FIELDS": {"ID": str(10**20), "ENTITY_TYPE_ID": type_id}})

    sync(emu, tokens, warehouse_target, tmp_path / "changes", state)

    assert our_queue(emu) == []
    assert live_items(warehouse_target) == before


def test_another_portals_rows_in_the_shared_table_stay(emu, tokens, warehouse_target, state, tmp_path) -> None:
    """The portals share ``items_128``: one portal's deleted type tombstones its own rows only, in a
    change run, a full resync and reconcile."""
    emu.create_portal("other", plan="professional", seed=7,
                      counts={"deal": 3, "contact": 2, "company": 2, "lead": 2, "activity": 0, "item": 4})
    emu.install(emu.client_id, portal="other")
    tokens.save("other", emu.install_tokens("other"))
    with Bitrix24Client(app_keys(emu).session("other", tokens), retry=FAST) as client, \
            warehouse_target.open() as warehouse:
        run_once(PortalSync("other", client, warehouse, tmp_path / "other", state=state), "full_resync")
    theirs = live_items(warehouse_target, portal="other")
    assert theirs
    sync(emu, tokens, warehouse_target, tmp_path / "full", state, "full_resync")

    delete_the_type(emu)
    sync(emu, tokens, warehouse_target, tmp_path / "changes", state)
    sync(emu, tokens, warehouse_target, tmp_path / "again", state, "full_resync")
    with Bitrix24Client(app_keys(emu).session(PORTAL, tokens), retry=FAST) as client, \
            warehouse_target.open() as warehouse:
        reconcile(PortalSync(PORTAL, client, warehouse, tmp_path / "reconcile", state=state), repair=True)

    assert live_items(warehouse_target) == []
    assert live_items(warehouse_target, portal="other") == theirs


@pytest.mark.parametrize("type_deleted", [False, True], ids=["item-access-denied", "type-gone-not-found"])
def test_an_item_refused_while_the_types_cannot_be_asked_is_parked_and_the_run_goes_on(
        type_deleted, emu, tokens, warehouse_target, state, tmp_path) -> None:
    """crm.type.* are administrators' methods: when the types cannot be asked, a refused item is
    not taken as deleted (even when its list answered NOT_FOUND), and nothing fails the run: the
    item is parked, the deal change loads."""
    sync(emu, tokens, warehouse_target, tmp_path / "full", state, "full_resync")
    crm = emu.world.portals[PORTAL].crm
    ids = sorted(crm.table(KIND).rows)
    deal = sorted(crm.table("deal").rows)[0]
    crm.write(KIND, "update", ids[0], {"title": "refused"}, USER)
    crm.write("deal", "update", deal, {"TITLE": "loads"}, USER)
    if type_deleted:
        emu.world.portals[PORTAL].events.unbind(lambda handler: handler.event == "ONCRMTYPEDELETE")
        with crm.portal.lock:
            crm.tables[KIND].rows.clear()
        crm.delete_smart_process(TYPE_ID)
    else:
        emu.add_fault("crm.item.list", "access_denied")
    emu.add_fault("crm.type.list", "access_denied")

    sync(emu, tokens, warehouse_target, tmp_path / "changes", state)

    assert live_items(warehouse_target) == ids
    assert [row.entity_id for row in ledger_rows(warehouse_target)] == [ids[0]]
    assert live_items(warehouse_target, "deals").count(deal) == 1
    assert "ONCRMDEALUPDATE" not in our_queue(emu)


def test_an_access_refusal_is_no_reason_to_ask_whether_the_type_was_deleted(
        emu, tokens, warehouse_target, state, tmp_path) -> None:
    """Only NOT_FOUND says a type may be gone: an ACCESS_DENIED item read parks the item, the types
    are not asked, its rows stay."""
    sync(emu, tokens, warehouse_target, tmp_path / "full", state, "full_resync")
    crm = emu.world.portals[PORTAL].crm
    ids = sorted(crm.table(KIND).rows)
    crm.write(KIND, "update", ids[0], {"title": "refused"}, USER)
    emu.add_fault("crm.item.list", "access_denied")
    emu.reset_stats()

    sync(emu, tokens, warehouse_target, tmp_path / "changes", state)

    assert live_items(warehouse_target) == ids
    assert [row.entity_id for row in ledger_rows(warehouse_target)] == [ids[0]]
    assert "crm.type.list" not in emu.stats()["methods"]
