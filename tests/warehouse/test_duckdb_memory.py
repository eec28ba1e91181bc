"""DuckDB's memory stays bounded while a run applies many chunks of changed rows (issue 13 goal 3).

A real DuckDB file with a small buffer pool: the versions an UPDATE writes to rows already in the
file cannot be spilled until a checkpoint, so without one a long change run ends in DuckDB's
"Out of Memory Error" (seen with ``ON CONFLICT DO UPDATE`` at 150 MB after 15 chunks of 2,500 deals).
"""

from __future__ import annotations

from connectors.warehouse.duckdb_warehouse import DuckDBWarehouse
from tests.warehouse.entities import PORTAL, deal_frame, deals_schema, later

SCHEMA = deals_schema()
CHUNK = 2_500
MEMORY_LIMIT_MB = 64  # below the default (128), so the checkpoint rule has to work


def _heavy(ids: range, stage: str, minutes: int):
    # ~1 KB of ``_raw`` per deal, as the emulator's deals carry.
    frame = deal_frame(list(ids), stage=stage, modified=later(minutes))
    frame["_raw"] = frame["_raw"] + " " * 1_000
    return frame


def test_a_long_run_of_updates_stays_inside_the_memory_limit(tmp_path) -> None:
    deals = 10_000
    with DuckDBWarehouse(tmp_path / "warehouse.duckdb", memory_limit_mb=MEMORY_LIMIT_MB) as warehouse:
        for start in range(1, deals + 1, CHUNK):
            with warehouse.transaction(publish=False) as tx:
                tx.upsert(PORTAL, SCHEMA, _heavy(range(start, start + CHUNK), "NEW", 0))
        unspillable = []
        rounds = ("PREPARATION", "EXECUTING", "FINAL_INVOICE", "WON")
        for minutes, stage in enumerate(rounds, start=1):
            for start in range(1, deals + 1, CHUNK):
                with warehouse.transaction(publish=False) as tx:
                    counts = tx.upsert(PORTAL, SCHEMA, _heavy(range(start, start + CHUNK), stage, minutes))
                assert counts.updated == CHUNK
                unspillable.append(warehouse._unspillable())

        assert max(unspillable) <= MEMORY_LIMIT_MB * 1024 * 1024 // 2
        assert warehouse.query("SELECT stage_id, count(*) FROM deals GROUP BY stage_id") == [("WON", deals)]
        assert warehouse.query("SELECT count(*), count(*) FILTER (WHERE _valid_to IS NULL) FROM deals_history") == [
            (deals * (len(rounds) + 1), deals)]
        assert warehouse.query("SELECT current_setting('memory_limit')")[0][0].endswith("MiB")
    assert (tmp_path / "warehouse.duckdb.tmp").stat().st_mode & 0o077 == 0
