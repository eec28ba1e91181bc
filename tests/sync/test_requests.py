"""What a run costs in requests (issue 13 goal 1), and that the look-up cache refreshes when it must.

Counted by the emulator over real HTTP; the runs go through `connectors.sync.steps` with a SQLite
state store holding the portal cache, one client per step as the Dagster ops have.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from connectors.bitrix24 import Bitrix24Client, FileTokenStore
from connectors.state import StateStore, open_state_store
from connectors.sync import failpoints
from connectors.sync.portal import DEFAULT_CONNECTOR, PortalSync
from connectors.sync.staging import Committed, SyncMode
from connectors.sync.steps import ack, commit, fetch, reserve
from connectors.warehouse import open_warehouse
from emulator.events import Origin
from emulator.testing import ThreadEmulator, run_emulator
from tests.ground_truth import compare, duckdb_rows
from tests.sync.conftest import PORTAL, app_keys

COUNTS = {"deal": 3000, "contact": 1200, "company": 700, "lead": 0, "activity": 0, "item": 40}


@pytest.fixture
def emu() -> Iterator[ThreadEmulator]:
    with run_emulator(limits=False, plan="professional", counts=COUNTS, seed=3) as running:
        yield running


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateStore]:
    with open_state_store(str(tmp_path / "state.sqlite")) as store:
        yield store


def run(emu: ThreadEmulator, tokens: FileTokenStore, state: StateStore, tmp_path: Path,
        mode: SyncMode = SyncMode.CHANGES) -> tuple[int, Committed, dict]:
    """One run, step by step with a new client each; returns the HTTP requests the portal saw."""
    run_dir = tmp_path / "staging" / uuid.uuid4().hex
    emu.reset_stats()
    manifest: object = mode
    for step in (reserve, fetch, commit, ack):
        with Bitrix24Client(app_keys(emu).session(PORTAL, tokens)) as client, \
                open_warehouse(tmp_path / "wh.duckdb") as warehouse:
            manifest = step(PortalSync(PORTAL, client, warehouse, run_dir, state=state), manifest)
    stats = emu.stats()
    return stats["http_requests"], Committed.read(run_dir / "committed.json"), stats["methods"]


def test_a_full_load_then_a_small_run_cost_what_issue_13_allows(
        emu: ThreadEmulator, tokens: FileTokenStore, state: StateStore, tmp_path: Path) -> None:
    requests, loaded, methods = run(emu, tokens, state, tmp_path, SyncMode.FULL_RESYNC)
    entities = sum(table.rows_upserted for table in loaded.tables.values())
    assert entities >= 4_900
    assert requests <= math.ceil(entities / 2_500) + 2, methods
    # The CRM binds ride blind in the first scan request; event.get is read once, in the look-up
    # batch that finds which reference-data events to bind (they ride with the CRM binds).
    assert methods["event.get"]["calls"] == 1 and methods["event.bind"]["calls"] > 0, methods

    for entity, count in (("deal", 5), ("contact", 4), ("company", 4)):
        for entity_id in range(1, count + 1):
            emu.write(entity, "update", entity_id, {"COMMENTS": "small run"})
    requests, committed, methods = run(emu, tokens, state, tmp_path)
    assert requests == 3, methods  # reserve, fetch, clear: look-ups come from the cache
    assert sum(table.rows_upserted for table in committed.tables.values()) == 13
    assert compare(emu, duckdb_rows(str(tmp_path / "wh.duckdb"))) == []


def test_a_new_user_field_is_loaded_in_the_run_that_first_sees_it(
        emu: ThreadEmulator, tokens: FileTokenStore, state: StateStore, tmp_path: Path) -> None:
    run(emu, tokens, state, tmp_path, SyncMode.FULL_RESYNC)
    emu.world.portals[PORTAL].crm.add_user_field("deal", "SCORE", "string", label="Score")
    emu.write("deal", "update", 7, {"UF_CRM_SCORE": "high"})
    requests, committed, methods = run(emu, tokens, state, tmp_path)
    # The field's ONCRMDEALUSERFIELDADD row made the cache ask again (one look-up batch) and the
    # reference data be read again (two batches, crm.deal.fields among them): 4 + 2 requests.
    assert methods["crm.deal.fields"]["calls"] == 2, methods
    assert committed.reference_rows["columns"] > 0
    assert requests == 6, methods
    assert compare(emu, duckdb_rows(str(tmp_path / "wh.duckdb"))) == []
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        assert con.execute("select uf_crm_score from deals where id = 7").fetchall() == [("high",)]


def test_a_run_after_one_that_never_finished_looks_for_orphans_and_others_do_not(
        emu: ThreadEmulator, tokens: FileTokenStore, state: StateStore, tmp_path: Path) -> None:
    run(emu, tokens, state, tmp_path, SyncMode.FULL_RESYNC)
    emu.write("deal", "update", 3, {"COMMENTS": "one"})
    _, _, methods = run(emu, tokens, state, tmp_path)
    assert "event.offline.list" not in methods

    # A run dies after its reserve: the sync log shows it running, so the next one checks.
    emu.write("deal", "update", 4, {"COMMENTS": "two"})
    with Bitrix24Client(app_keys(emu).session(PORTAL, tokens)) as client, \
            open_warehouse(tmp_path / "wh.duckdb") as warehouse:
        reserve(PortalSync(PORTAL, client, warehouse, tmp_path / "staging" / "dead", state=state))
    _, committed, methods = run(emu, tokens, state, tmp_path)
    assert methods["event.offline.list"]["calls"] >= 1
    assert committed.tables["deals"].rows_upserted == 1
    with open_warehouse(tmp_path / "wh.duckdb") as warehouse:
        runs = warehouse.runs(PORTAL)
    assert [r.status for r in runs[:2]] == ["succeeded", "failed"]
    assert runs[0].mode == "changes" and runs[0].events == 1
    assert [row for row in emu.queue() if row["CONNECTOR_ID"] == DEFAULT_CONNECTOR] == []


def test_a_crash_between_two_chunk_commits_is_repaired_by_the_next_run(
        emu: ThreadEmulator, tokens: FileTokenStore, tmp_path: Path) -> None:
    from tests.sync.test_cdc_loop import our_queue

    warehouse = tmp_path / "wh.duckdb"
    assert sync_cli(emu, tokens, warehouse, "full_resync") == 0
    for entity_id in range(1, 3001):  # 3,000 changed deals: two chunks, two transactions
        emu.world.portals[PORTAL].crm.write("deal", "update", entity_id, {"COMMENTS": "chunked"}, Origin(user_id=2))
    assert sync_cli(emu, tokens, warehouse, "changes", failpoint="during_commit") == -9
    assert len(our_queue(emu)) == 3000  # the first chunk is in the warehouse, nothing acknowledged
    assert sync_cli(emu, tokens, warehouse, "changes") == 0
    assert our_queue(emu) == []
    assert compare(emu, duckdb_rows(str(warehouse))) == []


def sync_cli(emu: ThreadEmulator, tokens: FileTokenStore, warehouse: Path, mode: str,
             failpoint: str | None = None) -> int:
    env = {**os.environ, "B24_CLIENT_ID": emu.client_id, "B24_CLIENT_SECRET": emu.client_secret,
           "B24_OAUTH_TOKEN_URL": f"{emu.url}/oauth/token/", "B24_STAGING_DIR": str(warehouse.parent / "staging")}
    env.pop(failpoints.ENV, None)
    if failpoint:
        env[failpoints.ENV] = failpoint
    done = subprocess.run(
        [sys.executable, "-m", "connectors.sync", "--portal", PORTAL, "--warehouse", str(warehouse),
         "--tokens-dir", str(tokens.directory), "--mode", mode, "--max-events", "5000"],
        env=env, capture_output=True, text=True, timeout=300)
    if failpoint is None and done.returncode != 0:
        raise AssertionError(done.stderr[-3000:])
    return done.returncode
