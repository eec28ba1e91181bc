"""DuckDB's memory stays bounded while a run applies many chunks of changed rows (issue 13 goal 3).

A real DuckDB file with a small buffer pool: the versions an UPDATE writes to rows already in the
file cannot be spilled until a checkpoint, so without one a long change run ends in DuckDB's
"Out of Memory Error" (seen with ``ON CONFLICT DO UPDATE`` at 150 MB after 15 chunks of 2,500 deals).
"""

from __future__ import annotations

import secrets

from connectors.warehouse.duckdb_warehouse import DuckDBWarehouse
from tests.warehouse.entities import PORTAL, deal_frame, deals_schema, later

SCHEMA = deals_schema()
CHUNK = 2_500
MEMORY_LIMIT_MB = 64  # below the default, so the checkpoint rule has to work


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


RELEASED = 8 * 1024 * 1024  # what release_memory lowers the limit to for a moment
ROWS = 40_000  # with an incompressible kilobyte each: ~30 MB of cached blocks


def _cached_bytes(warehouse: DuckDBWarehouse) -> int:
    return warehouse.query("SELECT sum(memory_usage_bytes) FROM duckdb_memory()")[0][0]


def test_release_memory_empties_the_buffer_pool_and_keeps_the_limit(tmp_path) -> None:
    """Between a commit and the next round's fetch the table's cached blocks are given back."""
    with DuckDBWarehouse(tmp_path / "warehouse.duckdb") as warehouse:  # the default memory limit
        for start in range(1, ROWS + 1, CHUNK):
            frame = deal_frame(list(range(start, start + CHUNK)), stage="NEW", modified=later(0))
            # An incompressible kilobyte per row, so the blocks DuckDB caches are many.
            frame["_raw"] = [f'{raw[:-1]}, "PAD": "{secrets.token_hex(500)}"}}' for raw in frame["_raw"]]
            with warehouse.transaction(publish=False) as tx:
                tx.upsert(PORTAL, SCHEMA, frame)
        warehouse.checkpoint()
        assert warehouse.query("SELECT count(*) FROM deals WHERE length(_raw) > 1000") == [(ROWS,)]
        before = _cached_bytes(warehouse)
        assert before > 3 * RELEASED
        limit = warehouse.query("SELECT current_setting('memory_limit')")

        warehouse.release_memory()

        assert _cached_bytes(warehouse) <= RELEASED
        assert warehouse.query("SELECT current_setting('memory_limit')") == limit
        # The data is read back from the file.
        assert warehouse.query("SELECT count(*) FROM deals WHERE length(_raw) > 1000") == [(ROWS,)]
