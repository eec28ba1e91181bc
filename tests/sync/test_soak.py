"""The soak (benchmarks/soak.py) and what it found: nothing is lost under faults and SIGKILLs.

The soak runs activity, ~25% transport faults and random SIGKILLs of `python -m connectors.sync`,
then checks the warehouse against the emulator's ground truth, the error lane, duplicates and
staging. Here it runs two short trials, so CI keeps it working. The other tests pin what it found:
an error-lane drain that follows a change run killed with its rows reserved must leave those rows
for a later run to load, not journal them as done (they sat in the queue for ever, never loaded).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.bitrix24 import FileTokenStore
from emulator.testing import ThreadEmulator, run_emulator
from tests.ground_truth import compare, duckdb_rows
from tests.sync.test_cdc_loop import COUNTS, change_data_for_a_while, our_queue, sync_in_subprocess

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def emu() -> Iterator[ThreadEmulator]:
    with run_emulator(limits=False, counts=COUNTS, seed=7) as running:
        yield running


def test_two_soak_trials_lose_nothing_leave_nothing_parked_and_no_staging() -> None:
    done = subprocess.run([sys.executable, "benchmarks/soak.py", "--trials", "2", "--seed", "3"], cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("soak_trials=2 kills=")
    assert last.endswith(" lost=0 duplicates=0 leftover_staging=0")


@pytest.mark.parametrize("failpoint", ["after_reserve_response", "after_reserve"])
def test_an_error_lane_drain_after_a_killed_change_run_leaves_its_reserved_rows_to_be_loaded(
        emu: ThreadEmulator, tokens: FileTokenStore, tmp_path: Path, failpoint: str) -> None:
    warehouse = tmp_path / "wh.duckdb"
    sync_in_subprocess(emu, tokens.directory, warehouse, mode="full_resync")
    change_data_for_a_while(emu, seconds=1.0)
    assert sync_in_subprocess(emu, tokens.directory, warehouse, failpoint) == -9
    assert any(row["PROCESS_ID"] for row in our_queue(emu)), "the killed run holds reserved rows"

    sync_in_subprocess(emu, tokens.directory, warehouse, mode="error_lane")
    for _ in range(5):
        sync_in_subprocess(emu, tokens.directory, warehouse)
        if not our_queue(emu):
            break

    assert our_queue(emu) == []
    assert compare(emu, duckdb_rows(str(warehouse))) == []
