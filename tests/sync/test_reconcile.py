"""Reconciliation (connectors.sync.reconcile) against the emulator, on a DuckDB file and on PostgreSQL.

Under test: changes still in flight (queued, reserved, in the error lane, or newer than the cut-off)
are reported apart and never fail the check; real drift (a row lost or edited in the warehouse behind
the connector's back, a delete never seen, a wrong tombstone) is counted per category and repaired
with ``repair=True``, after which the warehouse equals the portal's ground truth; an object restored
from the recycle bin with its id comes back, through the change sync and through repair.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from connectors.bitrix24 import Bitrix24Client, FileTokenStore
from connectors.sync.portal import PortalSync
from connectors.sync.reconcile import TableReconciliation, reconcile
from connectors.sync.steps import run_once
from connectors.warehouse import Warehouse
from emulator.testing import ThreadEmulator, run_emulator
from tests.ground_truth import compare
from tests.sync.conftest import PORTAL, app_keys

NO_MARGIN = timedelta(0)  # judge even the changes just made, so only the queue marks them in flight


@pytest.fixture
def emu() -> Iterator[ThreadEmulator]:
    with run_emulator(limits=False, seed=3) as running:
        yield running


@pytest.fixture
def portal(emu: ThreadEmulator, tokens: FileTokenStore, warehouse: Warehouse,
           tmp_path: Path) -> Iterator[Callable[[], PortalSync]]:
    """``portal()``: a fresh PortalSync (own staging directory) over one OAuth client; the
    warehouse starts as a full resync of the seeded portal."""
    runs = iter(range(1_000))
    with Bitrix24Client(app_keys(emu).session(PORTAL, tokens)) as client:
        def make() -> PortalSync:
            return PortalSync(PORTAL, client, warehouse, tmp_path / f"run{next(runs)}")

        run_once(make(), "full_resync")
        yield make


def warehouse_rows(warehouse: Warehouse) -> Callable[[str, str], list[tuple]]:
    def rows_of(table: str, content_field: str) -> list[tuple]:
        if table not in warehouse.entity_tables():
            return []
        return warehouse.query(
            f'SELECT id, _deleted_at IS NOT NULL, _source_modified_at, "{content_field.lower()}" '
            f"FROM {warehouse.relation(table)} WHERE portal = %(portal)s", {"portal": PORTAL})
    return rows_of


def by_table(reports: list[TableReconciliation]) -> dict[str, TableReconciliation]:
    return {report.table: report for report in reports}


def title_of(emu: ThreadEmulator, deal_id: int) -> str:
    return next(row for row in emu.truth("deal") if row["id"] == deal_id)["fields"]["TITLE"]


def change_behind_the_back(warehouse: Warehouse, sql: str) -> None:
    # RETURNING makes the statement answer rows on both engines (autocommitted outside transaction()).
    assert warehouse.query(f"{sql} RETURNING id", {"portal": PORTAL})


def test_a_healthy_portal_with_changes_still_queued_is_in_sync_and_reports_them_in_flight(
        emu: ThreadEmulator, warehouse: Warehouse, portal: Callable[[], PortalSync]) -> None:
    sync = portal()
    emu.write("deal", "update", 3, {"TITLE": "parked in the error lane"})
    taken = sync.queue.reserve()
    sync.queue.fail(taken.process_ids[0], [event.message_id for event in taken.events])
    emu.write("deal", "delete", 4)
    assert sync.queue.reserve().events  # reserved by a run still at work, not acknowledged
    new_id = emu.write("deal", "add", fields={"TITLE": "queued, unreserved"})
    emu.write("contact", "update", 2, {"NAME": "queued too"})

    reports = by_table(reconcile(sync, margin=NO_MARGIN))

    assert all(report.in_sync for report in reports.values()), {t: r.examples for t, r in reports.items()}
    assert reports["deals"].in_flight == 3 and reports["deals"].examples == {"in_flight": [3, 4, new_id]}
    assert reports["contacts"].in_flight == 1
    assert reports["deals"].portal_rows == 20 and reports["deals"].warehouse_live_rows == 20
    # With the default margin a just-made change is in flight by its time alone.
    emu.write("deal", "update", 5, {"TITLE": "just now"})
    sync.queue.ack(sync.queue.reserve().process_ids)  # its queue row is gone, the time still tells
    assert by_table(reconcile(portal()))["deals"].in_sync


def test_an_object_restored_from_the_recycle_bin_comes_back_with_the_change_sync(
        emu: ThreadEmulator, warehouse: Warehouse, portal: Callable[[], PortalSync]) -> None:
    emu.write("deal", "delete", 6)
    run_once(portal())
    assert warehouse.query(f"SELECT _deleted_reason FROM {warehouse.relation('deals')} WHERE id = 6") == [
        ("deleted",)]
    time.sleep(1.05)  # the restore's modification time is a later second than the delete's
    emu.restore("deal", 6)
    emu.write("deal", "update", 6, {"TITLE": "restored and renamed"})

    run_once(portal())

    assert warehouse.query(
        f"SELECT title, _deleted_at, _deleted_reason FROM {warehouse.relation('deals')} WHERE id = 6") == [
        ("restored and renamed", None, None)]
    assert compare(emu, warehouse_rows(warehouse)) == []
    assert all(report.in_sync for report in reconcile(portal(), margin=NO_MARGIN))


def test_real_drift_is_counted_per_category_and_repaired(
        emu: ThreadEmulator, warehouse: Warehouse, portal: Callable[[], PortalSync]) -> None:
    deals = warehouse.relation("deals")
    title_before = dict(warehouse.query(f"SELECT id, title FROM {deals}"))
    change_behind_the_back(warehouse, f"DELETE FROM {deals} WHERE portal = %(portal)s AND id = 8")
    change_behind_the_back(warehouse, f"UPDATE {deals} SET title = 'old', _source_modified_at = "
                                      f"_source_modified_at - INTERVAL '1 day' WHERE portal = %(portal)s AND id = 9")
    change_behind_the_back(warehouse, f"UPDATE {deals} SET title = 'tampered', _source_modified_at = "
                                      f"_source_modified_at + INTERVAL '1 day' WHERE portal = %(portal)s AND id = 10")
    change_behind_the_back(warehouse, f"UPDATE {deals} SET _deleted_at = _source_modified_at - INTERVAL '1 day', "
                                      f"_deleted_reason = 'wrong' WHERE portal = %(portal)s AND id = 11")
    sync = portal()
    emu.write("deal", "delete", 12)
    sync.queue.ack(sync.queue.reserve().process_ids)  # the delete event is lost

    found = by_table(reconcile(sync, margin=NO_MARGIN))["deals"]

    assert (found.missing, found.stale, found.ahead, found.revived, found.extra) == (1, 1, 1, 1, 1)
    assert found.examples == {"missing": [8], "stale": [9], "ahead": [10], "revived": [11], "extra": [12]}
    assert not found.in_sync and found.drift == 5 and found.in_flight == 0
    assert compare(emu, warehouse_rows(warehouse)) != []

    repaired = by_table(reconcile(portal(), repair=True, margin=NO_MARGIN))["deals"]
    assert repaired.drift == 5

    assert compare(emu, warehouse_rows(warehouse)) == []
    assert warehouse.query(
        f"SELECT id, title, _deleted_reason FROM {deals} WHERE id IN (8, 9, 10, 11, 12) ORDER BY id") == [
        *((deal_id, title_of(emu, deal_id), None) for deal_id in (8, 9, 10, 11)),
        (12, title_before[12], "absent_in_reconciliation")]
    after = by_table(reconcile(portal(), margin=NO_MARGIN))["deals"]
    assert after.in_sync and after.drift == 0


def test_a_warehouse_row_newer_than_the_portal_is_drift_even_when_only_its_time_differs(
        emu: ThreadEmulator, warehouse: Warehouse, portal: Callable[[], PortalSync]) -> None:
    deals = warehouse.relation("deals")
    change_behind_the_back(warehouse, f"UPDATE {deals} SET _source_modified_at = _source_modified_at + "
                                      f"INTERVAL '2 hours' WHERE portal = %(portal)s AND id IN (2, 3)")

    found = by_table(reconcile(portal(), repair=True))["deals"]

    assert found.ahead == 2 and found.examples == {"ahead": [2, 3]} and not found.in_sync
    assert compare(emu, warehouse_rows(warehouse)) == []
    assert by_table(reconcile(portal()))["deals"].in_sync
