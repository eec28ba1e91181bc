"""The product end to end: a real `dagster dev` (webserver + daemon), the receiver and the emulator.

Users change CRM data for a while and stop; the sensor, the full resync and the sync runs must
then leave every entity of the portal's ground truth in the warehouse (tombstones for deletes),
with an empty queue: on DuckDB (the default) and on PostgreSQL.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from emulator.testing import run_emulator_process
from tests.e2e.conftest import PG_DSN
from tests.e2e.stack import running_stack
from tests.ground_truth import compare, duckdb_rows

pytestmark = pytest.mark.e2e

COUNTS = {"deal": 600, "contact": 300, "company": 100, "lead": 200, "activity": 300, "item": 80}


def postgres_rows(schema: str, portal: str):
    def rows_of(table: str, content_field: str) -> list[tuple]:
        with psycopg.connect(PG_DSN) as con:
            exists = con.execute("select 1 from information_schema.tables where table_schema = %s and table_name = %s",
                                 (schema, table)).fetchone()
            if not exists:
                return []
            return con.execute(
                f'select id, _deleted_at is not null, _source_modified_at, "{content_field.lower()}" '
                f'from "{schema}"."{table}" where portal = %s', (portal,)).fetchall()
    return rows_of


@pytest.mark.parametrize("backend", ["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_changes_made_in_the_portal_reach_the_warehouse_through_dagster(
        tmp_path: Path, backend: str, pg_schema: str) -> None:
    with run_emulator_process(counts=COUNTS, seed=5, limits=True, plan="professional") as emu:
        # The PostgreSQL warehouse's schema is named in its URL (?schema=).
        warehouse = str(tmp_path / "warehouse.duckdb") if backend == "duckdb" else \
            f"{PG_DSN}{'&' if '?' in PG_DSN else '?'}schema={pg_schema}"
        with running_stack(emu, tmp_path, warehouse) as stack:
            stack.wait_until(stack.loaded_portals, 300,
                             "the full resync of the newly installed portal")
            emu.start_activity(15, seed=3)
            time.sleep(20)
            emu.stop_activity()
            stack.wait_until_drained()
            portal = stack.loaded_portals()[0]
            assert [r for r in stack.runs() if r.status.value == "FAILURE"] == []

        rows_of = (duckdb_rows(warehouse, portal) if backend == "duckdb"
                   else postgres_rows(pg_schema, portal))
        assert compare(emu, rows_of) == []


@pytest.mark.parametrize("failpoint", ["after_reserve_response", "after_reserve", "during_fetch", "after_commit"])
def test_a_sync_run_killed_at_any_step_is_recovered_by_the_next_run(tmp_path: Path, failpoint: str) -> None:
    """The run process is SIGKILLed once (failpoint; the first run to get there, which for
    after_commit is the full resync); Dagster fails and retries the dead run, monitoring frees its
    pool slot, and recovery (journal, orphans) leaves the warehouse equal to the portal."""
    crash_env = {"B24WH_FAILPOINT": failpoint, "B24WH_FAILPOINT_ONCE": str(tmp_path / "crashed")}
    # A sync run whose process died is failed (and retried) after max_runtime_seconds.
    fast_monitoring = {"run_monitoring": {"enabled": True, "poll_interval_seconds": 2, "max_runtime_seconds": 15,
                                          "cancel_timeout_seconds": 5, "free_slots_after_run_end_seconds": 2}}
    with run_emulator_process(counts=COUNTS, seed=6, limits=True, plan="professional") as emu:
        warehouse = str(tmp_path / "warehouse.duckdb")
        with running_stack(emu, tmp_path, warehouse, extra_env=crash_env,
                           instance_settings=fast_monitoring) as stack:
            stack.wait_until(stack.loaded_portals, 300, "the full resync")
            emu.start_activity(30, seed=4)
            time.sleep(6)
            emu.stop_activity()
            stack.wait_until(lambda: (tmp_path / "crashed").exists(), 120, f"a run to reach {failpoint}")
            stack.wait_until_drained(timeout_s=300)
            portal = stack.loaded_portals()[0]
        assert compare(emu, duckdb_rows(warehouse, portal)) == []
