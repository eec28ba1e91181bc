"""The scale benchmark's core on three portals: bootstrap, 40 s of activity, every change measured,
and every portal's warehouse equal to its ground truth afterwards (PostgreSQL everywhere)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from scale import WAREHOUSE_SCHEMA, scale_stack  # noqa: E402

from tests.ground_truth import TABLES, compare  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(420)]


def warehouse_rows(dsn: str, key: str):
    def rows_of(table: str, content_field: str) -> list[tuple]:
        with psycopg.connect(dsn) as con:
            exists = con.execute("select 1 from information_schema.tables where table_schema = %s "
                                 "and table_name = %s", (WAREHOUSE_SCHEMA, table)).fetchone()
            if not exists:
                return []
            return con.execute(
                f'select id, _deleted_at is not null, _source_modified_at, "{content_field.lower()}" '
                f'from "{WAREHOUSE_SCHEMA}"."{table}" where portal = %s', (key,)).fetchall()
    return rows_of


def test_three_portals_with_activity_end_equal_to_their_ground_truth(tmp_path: Path) -> None:
    with scale_stack(3, tmp_path, seed=7) as bench:
        boot = bench.bootstrap(max_s=150)
        assert boot.complete, f"only {boot.done}/3 portals bootstrapped in {boot.seconds:.0f} s"
        # Busier than the default, so 40 s give every portal changes to carry.
        activity = bench.activity(40, 120, random.Random(7), per_portal_per_min=6.0, busy_share=0.34,
                                  busy_factor=3.0)
        assert activity.changes >= 6
        assert activity.landed == activity.changes, f"{activity.changes - activity.landed} changes never landed"
        assert set(activity.per_portal) == set(bench.names)
        assert all(0 < seconds < 120 for seconds in activity.latencies)
        assert activity.runs["sync"] + activity.runs["sync_portals"] >= 1
        assert activity.event_rows > 0 and activity.http_requests > 0 and activity.cpu_s > 0
        assert activity.rss_peak_sum >= activity.rss_peak_max > 0
        assert bench.wait_until_idle(120)
        failed = [run.run_id for run in bench.stack.runs() if run.status.value == "FAILURE"]
        assert failed == []
        for name, key in bench.stack.keys.items():
            assert compare(bench.emu, warehouse_rows(bench.dsn, key), portal=name, tables=TABLES) == [], name
