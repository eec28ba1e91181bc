"""What operators see, through a real `dagster dev`: on a healthy stack with users at work every check
passes and the sync watermark is fresh; when the portal breaks (every call answers 500), the
freshness policy turns red within its window, and the fleet check names the stale portal.

The code location is the product's with a two-minute freshness window (`tests.e2e.short_window`), so
the test does not wait the product's ten minutes.
"""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.freshness import FreshnessState
from dagster_graphql import DagsterGraphQLClient

from emulator.testing import run_emulator_process
from pipelines.assets import SYNC_WATERMARK
from tests.e2e.short_window import FRESHNESS_WINDOW
from tests.e2e.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

COUNTS = {"deal": 300, "contact": 150, "company": 50, "lead": 100, "activity": 150, "item": 40}


def launch_and_wait(stack: Stack, job: str, partition: str | None = None, timeout_s: float = 180) -> str:
    """Submits ``job`` to the stack's run queue (pools and run limits apply) and waits for success."""
    client = DagsterGraphQLClient("127.0.0.1", port_number=stack.ui_port)
    run_id = client.submit_job_execution(job, tags={"dagster/partition": partition} if partition else None)
    stack.wait_until(lambda: client.get_run_status(run_id) in (dg.DagsterRunStatus.SUCCESS,
                                                               dg.DagsterRunStatus.FAILURE,
                                                               dg.DagsterRunStatus.CANCELED),
                     timeout_s, f"the {job} run")
    assert client.get_run_status(run_id) is dg.DagsterRunStatus.SUCCESS, f"{job} run {run_id} did not succeed"
    return run_id


def latest_check_results(instance: dg.DagsterInstance, run_ids: list[str]) -> dict[str, bool]:
    """``{"asset:check": passed}`` for every check evaluated by these runs."""
    results: dict[str, bool] = {}
    for run_id in run_ids:
        for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            evaluation = record.dagster_event.event_specific_data
            results[f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"] = evaluation.passed
    return results


def freshness(instance: dg.DagsterInstance) -> FreshnessState | None:
    record = instance.get_freshness_state_records([SYNC_WATERMARK]).get(SYNC_WATERMARK)
    return record.freshness_state if record else None


def describe_freshness(instance: dg.DagsterInstance) -> str:
    record = instance.get_latest_materialization_event(SYNC_WATERMARK)
    age = f"{time.time() - record.timestamp:.0f} s ago" if record else "never"
    daemons = {kind: status.healthy for kind, status in instance.get_daemon_statuses().items()}
    return f"state {freshness(instance)}, last watermark {age}, daemons {daemons}"


def test_every_check_passes_on_a_healthy_stack_and_freshness_goes_red_when_the_portal_breaks(
        tmp_path: Path) -> None:
    with run_emulator_process(counts=COUNTS, seed=7, limits=True, plan="professional") as emu:
        warehouse = str(tmp_path / "warehouse.duckdb")
        with running_stack(emu, tmp_path, warehouse, code_location="tests.e2e.short_window",
                           extra_env={"FRESHNESS_DAEMON_INTERVAL_SECONDS": "5"}) as stack:
            instance = stack.instance()
            stack.wait_until(stack.loaded_portals, 300, "the full resync")
            emu.start_activity(3, seed=11)
            time.sleep(60)
            emu.stop_activity()
            stack.wait_until_drained()
            portal = stack.loaded_portals()[0]

            runs = [launch_and_wait(stack, "health_checks"),
                    launch_and_wait(stack, "reconcile", portal, timeout_s=300),
                    launch_and_wait(stack, "drain_error_lane", portal)]
            results = latest_check_results(instance, runs)
            assert {"bitrix24/sync_watermark:every_portal_current", "bitrix24/sync_watermark:journal_healthy",
                    "bitrix24/deals:value_coercions", "bitrix24/reconciliation:in_sync_with_portal",
                    "bitrix24/dead_letters:error_lane_empty"} <= set(results)
            assert [name for name, passed in results.items() if not passed] == []
            stack.wait_until(lambda: freshness(instance) is FreshnessState.PASS, 90,
                             lambda: f"the watermark to be fresh ({describe_freshness(instance)})")
            assert [r for r in stack.runs() if r.status is dg.DagsterRunStatus.FAILURE] == []

            # The portal breaks: syncs and the sensor's peeks fail, nothing renews the watermark.
            broken_at = time.monotonic()
            emu.add_fault("*", "http_500")
            emu.start_activity(1, seed=12)
            stack.wait_until(lambda: freshness(instance) is FreshnessState.FAIL,
                             FRESHNESS_WINDOW.total_seconds() + 60, "freshness to turn red")
            assert time.monotonic() - broken_at <= FRESHNESS_WINDOW.total_seconds() + 60
            # Judged while the portal is still broken: once it answers again, the sensor renews the
            # watermark within seconds and the check rightly passes.
            stale = latest_check_results(instance, [launch_and_wait(stack, "health_checks")])
            emu.stop_activity()
            emu.clear_faults()
            assert stale["bitrix24/sync_watermark:every_portal_current"] is False
