"""The error lane cannot lose a change: DESIGN §3 step 7 over the real emulator and both warehouses.

Under test: an object the portal refuses to return is parked (its queue row moves to the error lane,
the ledger counts the attempt and keeps the error); a drain that fails it again leaves the row in the
queue, under either reading of the unsettled `event.offline.error` point (facts §2.10); it leaves
the lane only when it loads or when an operator discards it, recorded with who and why. Transient
faults (5xx, cut-off bodies) are retried or fail the step, never parked; a lost reserve answer is
recovered within the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.bitrix24 import Bitrix24Client, Bitrix24Error, FileTokenStore, RetryPolicy
from connectors.bitrix24.errors import OperationTimeLimit
from connectors.state import Portal, PortalProgress, StateStore, open_state_store
from connectors.sync.portal import DEFAULT_CONNECTOR, PortalSync
from connectors.sync.steps import fetch, reserve, run_once
from connectors.warehouse import ParkedStatus, WarehouseError
from emulator.testing import ThreadEmulator, run_emulator
from tests.ground_truth import compare, duckdb_rows
from tests.sync.conftest import PORTAL, app_keys
from tests.warehouse.conftest import WarehouseTarget

COUNTS = {"deal": 30, "contact": 20, "company": 10, "lead": 10, "activity": 10, "item": 5}
FAST = RetryPolicy(attempts=4, backoff_base_s=0.05, backoff_max_s=0.2)


@pytest.fixture
def emu() -> Iterator[ThreadEmulator]:
    with run_emulator(limits=False, counts=COUNTS, seed=3) as running:
        yield running


def duckdb_target(tmp_path: Path) -> WarehouseTarget:
    return WarehouseTarget("duckdb", str(tmp_path / "wh.duckdb"), {})


def sync(emu: ThreadEmulator, tokens: FileTokenStore, target: WarehouseTarget, staging: Path,
         mode: str = "changes", retry: RetryPolicy = FAST, state: StateStore | None = None) -> None:
    with Bitrix24Client(app_keys(emu).session(PORTAL, tokens), retry=retry) as client, \
            target.open() as warehouse:
        run_once(PortalSync(PORTAL, client, warehouse, staging, state=state), mode)


def our_rows(emu: ThreadEmulator) -> list[dict]:
    return [row for row in emu.queue() if row["CONNECTOR_ID"] == DEFAULT_CONNECTOR]


def stored_title(target: WarehouseTarget, table: str, entity_id: int, column: str = "title") -> str | None:
    with target.open() as warehouse:
        rows = warehouse.query(f"SELECT {column} FROM {warehouse.relation(table)} WHERE portal = %(p)s "
                               f"AND id = %(id)s", {"p": PORTAL, "id": entity_id})
    return rows[0][0] if rows else None


def ledger(target: WarehouseTarget, status: ParkedStatus | None = None):
    with target.open() as warehouse:
        return warehouse.error_lane(PORTAL, status)


@pytest.mark.parametrize("error_unreserves_lane_rows", [False, True], ids=["lane-rows-stay-reserved",
                                                                          "lane-rows-unreserved"])
def test_a_refused_object_stays_in_the_error_lane_through_failing_drains_until_it_loads(
        emu, tokens, warehouse_target, tmp_path, error_unreserves_lane_rows) -> None:
    emu.patch_portal(error_unreserves_lane_rows=error_unreserves_lane_rows)
    # Each run reports to the state store what it leaves parked, and that the full resync of the
    # portal's install completed: the sensor confirms a quiet portal as current only when both are clear.
    state = open_state_store(tmp_path / "state.sqlite3")
    installed = datetime(2026, 11, 1, tzinfo=UTC)
    state.save_portal(Portal(PORTAL, "member", "emulator", emu.url, "app-token", installed_at=installed))
    sync(emu, tokens, warehouse_target, tmp_path / "s0", mode="full_resync", state=state)
    assert state.progress()[PORTAL] == PortalProgress(PORTAL, parked=0, resynced=installed.isoformat())
    emu.write("deal", "update", 4, {"TITLE": "refused for now"})
    emu.write("contact", "update", 2, {"NAME": "Loads fine"})
    emu.add_fault("crm.deal.list", "access_denied")

    sync(emu, tokens, warehouse_target, tmp_path / "s1", state=state)
    assert state.progress()[PORTAL].parked == 1
    assert stored_title(warehouse_target, "contacts", 2, "name") == "Loads fine"
    assert [(str(row["ERROR"]), row["EVENT_NAME"]) for row in our_rows(emu)] == [("1", "ONCRMDEALUPDATE")]
    [parked] = ledger(warehouse_target)
    assert (parked.entity_kind, parked.entity_id, parked.attempts) == ("deal", 4, 1)
    assert "ACCESS_DENIED" in (parked.last_error or "")

    for attempt in (2, 3):  # the scheduled drain fails it again: the row must survive each time
        sync(emu, tokens, warehouse_target, tmp_path / f"d{attempt}", mode="error_lane")
        assert len(our_rows(emu)) == 1, "a drain that failed again must not delete the row"
        [parked] = ledger(warehouse_target)
        assert parked.attempts == attempt

    emu.clear_faults()
    sync(emu, tokens, warehouse_target, tmp_path / "d4", mode="error_lane", state=state)
    assert state.progress()[PORTAL] == PortalProgress(PORTAL, parked=0, resynced=installed.isoformat())
    state.close()
    assert our_rows(emu) == []
    assert stored_title(warehouse_target, "deals", 4) == "refused for now"
    [resolved] = ledger(warehouse_target, None)
    assert resolved.status is ParkedStatus.LOADED and resolved.resolved_at is not None


def test_an_operator_discard_is_recorded_and_acknowledged_by_the_next_drain_but_a_later_change_loads(
        emu, tokens, tmp_path) -> None:
    target = duckdb_target(tmp_path)
    sync(emu, tokens, target, tmp_path / "s0", mode="full_resync")
    emu.write("deal", "update", 6, {"TITLE": "poisoned"})
    emu.add_fault("crm.deal.list", "access_denied")
    sync(emu, tokens, target, tmp_path / "s1")
    [parked] = ledger(target)

    with target.open() as warehouse, pytest.raises(WarehouseError, match="who"):
        warehouse.discard(PORTAL, [parked.message_id], by=" ", reason="")
    cli = [sys.executable, "-m", "connectors.sync.error_lane"]
    where = ["--portal", PORTAL, "--warehouse", target.target]
    listed = subprocess.run([*cli, "list", *where], capture_output=True, text=True, check=True).stdout
    assert json.loads(listed)["message_id"] == parked.message_id
    refused = subprocess.run([*cli, "discard", *where, "--message-id", "f" * 32, "--by", "ops", "--reason", "x"],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "not parked" in refused.stderr
    subprocess.run([*cli, "discard", *where, "--message-id", parked.message_id, "--by", "ops@example.com",
                    "--reason", "deal is broken"], check=True, capture_output=True)
    sync(emu, tokens, target, tmp_path / "d1", mode="error_lane")
    assert our_rows(emu) == []
    [discarded] = ledger(target, ParkedStatus.DISCARDED)
    assert (discarded.discarded_by, discarded.discard_reason) == ("ops@example.com", "deal is broken")

    emu.clear_faults()
    time.sleep(1.1)  # a later occurrence: TIMESTAMP_X has whole seconds
    emu.write("deal", "update", 6, {"TITLE": "fixed by a user"})
    sync(emu, tokens, target, tmp_path / "s2")
    assert stored_title(target, "deals", 6) == "fixed by a user"


def test_a_transient_fault_during_fetch_fails_the_step_and_parks_nothing(emu, tokens, tmp_path) -> None:
    target = duckdb_target(tmp_path)
    sync(emu, tokens, target, tmp_path / "s0", mode="full_resync")
    for deal in (1, 2, 3):
        emu.write("deal", "update", deal, {"TITLE": f"changed {deal}"})
    emu.add_fault("batch", "http_500")
    with pytest.raises(Bitrix24Error):
        sync(emu, tokens, target, tmp_path / "s1")
    emu.clear_faults()
    assert all(str(row["ERROR"]) == "0" for row in our_rows(emu)) and our_rows(emu)
    assert ledger(target) == []

    sync(emu, tokens, target, tmp_path / "s2")
    assert our_rows(emu) == []
    assert compare(emu, duckdb_rows(target.target)) == []


def test_a_quarter_of_answers_cut_off_still_drains_everything_with_nothing_lost(emu, tokens, tmp_path) -> None:
    target = duckdb_target(tmp_path)
    sync(emu, tokens, target, tmp_path / "s0", mode="full_resync")
    emu.start_activity(200, seed=5)
    time.sleep(1.5)
    emu.stop_activity()
    emu.add_fault("*", "malformed_json", rate=0.25)
    failed_runs = 0
    for attempt in range(40):
        try:
            sync(emu, tokens, target, tmp_path / f"r{attempt}")
        except Bitrix24Error:
            failed_runs += 1
            continue
        if not our_rows(emu):
            break
    emu.clear_faults()
    assert our_rows(emu) == [], f"queue not drained after {attempt + 1} runs ({failed_runs} failed)"
    assert compare(emu, duckdb_rows(target.target)) == []
    assert ledger(target) == []


def test_a_lost_reserve_answer_is_recovered_in_the_same_run_instead_of_repeating_it(
        emu, tokens, tmp_path) -> None:
    target = duckdb_target(tmp_path)
    sync(emu, tokens, target, tmp_path / "s0", mode="full_resync")
    for deal in (7, 8, 9):
        emu.write("deal", "update", deal, {"TITLE": f"reserved blind {deal}"})
    with Bitrix24Client(app_keys(emu).session(PORTAL, tokens), retry=FAST) as client, target.open() as wh:
        portal_sync = PortalSync(PORTAL, client, wh, tmp_path / "s1")
        portal_sync.queue.features()  # asked before the fault, so the next batch is the reserve
        emu.add_fault("batch", "malformed_json", count=1)
        reserved = reserve(portal_sync)
        assert emu.stats()["methods"]["event.offline.get"]["calls"] >= 1
        run_fetched = fetch(portal_sync, reserved)
        assert run_fetched.exists()
    sync(emu, tokens, target, tmp_path / "s2")
    assert our_rows(emu) == []
    assert [stored_title(target, "deals", deal) for deal in (7, 8, 9)] == [f"reserved blind {d}" for d in (7, 8, 9)]


def test_the_operating_budget_bound_holds_on_the_retry_path_too(emu, tokens, tmp_path) -> None:
    target = duckdb_target(tmp_path)
    sync(emu, tokens, target, tmp_path / "s0", mode="full_resync")
    emu.write("deal", "update", 3, {"TITLE": "over budget"})
    emu.patch_portal(limits={"enabled": True, "operating_limit_s": 0.2, "burst": 10_000, "drain_per_s": 10_000})
    emu.add_fault("crm.deal.list", "slow", delay_s=0.3, count=1)
    bounded = RetryPolicy(attempts=3, backoff_base_s=0.05, backoff_max_s=0.2, max_operating_wait_s=2.0)
    with Bitrix24Client(app_keys(emu).session(PORTAL, tokens), retry=bounded) as client:
        client.call("crm.deal.list", {"filter": {"ID": 1}, "select": ["ID"]})  # spends the 0.2 s budget
        started = time.monotonic()
        with target.open() as warehouse, pytest.raises(OperationTimeLimit):
            run_once(PortalSync(PORTAL, client, warehouse, tmp_path / "s1"))
        assert time.monotonic() - started < 30, "the 2 s bound must hold on every waiting path"
    assert [str(row["ERROR"]) for row in our_rows(emu)] == ["0"], "a limit is transient: nothing parked"



def test_a_drain_run_loads_a_crashed_change_reservation_instead_of_forgetting_it(emu, tokens, tmp_path) -> None:
    target = duckdb_target(tmp_path)
    sync(emu, tokens, target, tmp_path / "s0", mode="full_resync")
    emu.write("deal", "update", 5, {"TITLE": "reserved, then the run died"})
    with Bitrix24Client(app_keys(emu).session(PORTAL, tokens), retry=FAST) as client, target.open() as wh:
        taken = PortalSync(PORTAL, client, wh, tmp_path / "dead").queue.reserve()
        wh.record_reserved(PORTAL, {pid: 1 for pid in taken.process_ids})

    sync(emu, tokens, target, tmp_path / "d1", mode="error_lane")  # the next run happens to be a drain
    assert our_rows(emu) == []
    assert stored_title(target, "deals", 5) == "reserved, then the run died"
