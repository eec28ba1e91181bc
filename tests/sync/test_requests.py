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
from collections.abc import Iterator, Mapping
from pathlib import Path

import duckdb
import pytest

from connectors.bitrix24 import Bitrix24Client, FileTokenStore
from connectors.bitrix24.batch import BatchResult, Command
from connectors.bitrix24.entities import STANDARD_KINDS, smart_process_kind
from connectors.bitrix24.reference import REFERENCE_EVENTS
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
from tests.sync.test_cdc_loop import our_queue

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
    # The CRM and reference-data binds ride blind in the first scan request (the smart-process
    # ones in the next, before its count), with the look-ups: nothing asks which are bound.
    assert "event.get" not in methods and "events" not in methods, methods
    crm_events = sum(len(kind.bind_events) for kind in (*STANDARD_KINDS, smart_process_kind(128)))
    assert methods["event.bind"] == {**methods["event.bind"], "calls": crm_events + len(REFERENCE_EVENTS),
                                     "errors": 0}, methods

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


@pytest.mark.parametrize("deals", [5_000, 20_000])
def test_a_fresh_portal_of_deals_only_loads_in_one_request_per_2500_and_one_more(
        deals: int, tmp_path: Path, state: StateStore) -> None:
    # As fast_bitrix24 would (issue 13): its first request counts, ours also binds and asks the
    # look-ups (features, types, fields), then 50 keyset pages per request.
    counts = {"deal": deals, "contact": 0, "company": 0, "lead": 0, "activity": 0, "item": 0}
    with run_emulator(limits=False, plan="professional", counts=counts, smart_process_types=0, seed=5) as fresh:
        store = FileTokenStore(tmp_path / "tokens")
        store.save(PORTAL, fresh.install_tokens())
        requests, loaded, methods = run(fresh, store, state, tmp_path, SyncMode.FULL_RESYNC)
        assert loaded.tables["deals"].rows_upserted == deals
        assert requests == math.ceil(deals / 2_500) + 1, methods
        assert compare(fresh, duckdb_rows(str(tmp_path / "wh.duckdb"))) == []


def test_smart_process_types_found_in_the_first_answer_are_bound_before_their_count_and_all_loaded(
        tmp_path: Path, state: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # Fresh portal, three smart-process types: their kinds are known only from the crm.type.list in
    # the first scan request, and join the next one (binds, fields, then count) in the pages' room.
    counts = {"deal": 2_600, "contact": 0, "company": 0, "lead": 0, "activity": 0, "item": 150}
    with run_emulator(limits=False, plan="professional", counts=counts, smart_process_types=3, seed=5) as fresh:
        store = FileTokenStore(tmp_path / "tokens")
        store.save(PORTAL, fresh.install_tokens())
        crm = fresh.world.portal(PORTAL).crm
        types = [entity for entity in crm.entities() if entity.startswith("item:")]
        made: list[tuple[int, str, int]] = []  # (requests answered before, entity, id) of each new record
        original = Bitrix24Client.batch

        def batch_then_add(client: Bitrix24Client, commands: Mapping[str, Command], **options: bool) -> BatchResult:
            """A user adds a deal and an item of every type after each request of the scan."""
            outcome = original(client, commands, **options)
            answered = len({number for number, _, _ in made}) + 1
            for entity in ("deal", *types):
                made.append((answered, entity, crm.write(entity, "add", None, {"TITLE": "during the scan",
                                                                               "title": "during the scan"},
                                                         Origin(user_id=2))))
            return outcome

        monkeypatch.setattr(Bitrix24Client, "batch", batch_then_add)
        requests, loaded, methods = run(fresh, store, state, tmp_path, SyncMode.FULL_RESYNC)
        monkeypatch.undo()

        entities = sum(table.rows_upserted for table in loaded.tables.values())
        assert requests <= math.ceil(entities / 2_500) + 2, methods
        assert requests == 3, methods  # the smart processes cost no request of their own
        # Items added after the request that counted their type (the second) are queued: bound first.
        queued = {(row["EVENT_NAME"], int(row["EVENT_DATA"]["FIELDS"]["ID"])) for row in our_queue(fresh)}
        after_count = [(entity, entity_id) for answered, entity, entity_id in made
                       if answered >= 2 and entity.startswith("item:")]
        assert after_count and all(("ONCRMDYNAMICITEMADD", entity_id) in queued for _, entity_id in after_count)

        run(fresh, store, state, tmp_path)
        assert our_queue(fresh) == []
        assert compare(fresh, duckdb_rows(str(tmp_path / "wh.duckdb"))) == []


def test_a_plan_without_connector_keys_binds_without_one_when_its_features_were_unknown(
        tmp_path: Path, state: StateStore) -> None:
    # The first scan request carries the binds with our connector key before feature.get answers; a
    # plan without rest_auth_connector refuses them, so the scan starts again with binds that carry
    # none: no request more than asking the look-ups first would have cost.
    counts = {"deal": 5_000, "contact": 0, "company": 0, "lead": 0, "activity": 0, "item": 0}
    with run_emulator(limits=False, plan="standard", counts=counts, smart_process_types=0, seed=5) as fresh:
        store = FileTokenStore(tmp_path / "tokens")
        store.save(PORTAL, fresh.install_tokens())
        requests, loaded, methods = run(fresh, store, state, tmp_path, SyncMode.FULL_RESYNC)
        assert loaded.tables["deals"].rows_upserted == 5_000
        assert requests == math.ceil(5_000 / 2_500) + 2, methods

        fresh.write("deal", "update", 9, {"TITLE": "queued without a connector key"})
        assert [row["EVENT_NAME"] for row in fresh.queue() if row["CONNECTOR_ID"] == ""] == ["ONCRMDEALUPDATE"]
        with pytest.warns(UserWarning, match="clear=1"):
            run(fresh, store, state, tmp_path)
        assert fresh.queue() == []
        assert compare(fresh, duckdb_rows(str(tmp_path / "wh.duckdb"))) == []


def test_the_command_line_with_a_state_store_caches_look_ups_and_shares_the_portal_bucket(
        emu: ThreadEmulator, tokens: FileTokenStore, tmp_path: Path) -> None:
    """`python -m connectors.sync --state-store` runs as a Dagster run does: the look-ups a full
    resync asked are cached in the store, so the next change run costs reserve, fetch and clear."""
    store_path = tmp_path / "state.sqlite3"
    with open_state_store(str(store_path)) as store:
        store.save_token(PORTAL, tokens.load(PORTAL))
    env = {**os.environ, "B24_CLIENT_ID": emu.client_id, "B24_CLIENT_SECRET": emu.client_secret,
           "B24_OAUTH_TOKEN_URL": f"{emu.url}/oauth/token/", "B24_STAGING_DIR": str(tmp_path / "staging")}
    env.pop(failpoints.ENV, None)

    def cli(mode: str) -> int:
        emu.reset_stats()
        done = subprocess.run(
            [sys.executable, "-m", "connectors.sync", "--portal", PORTAL, "--warehouse", str(tmp_path / "wh.duckdb"),
             "--state-store", str(store_path), "--mode", mode], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return emu.stats()["http_requests"]

    cli("full_resync")
    for entity_id in range(1, 101):
        emu.world.portals[PORTAL].crm.write("deal", "update", entity_id, {"COMMENTS": "cli"}, Origin(user_id=2))
    assert cli("changes") == 3
    with open_state_store(str(store_path)) as store:
        assert store.cached(PORTAL, "types") is not None
    assert our_queue(emu) == []


@pytest.mark.parametrize("fields_cached", [True, False], ids=["bind-refused", "fields-not-found"])
def test_a_full_resync_over_a_cached_smart_process_type_the_portal_deleted_asks_the_types_again(
        fields_cached: bool, emu: ThreadEmulator, tokens: FileTokenStore, state: StateStore, tmp_path: Path) -> None:
    """The cache still lists a type the portal no longer has (its ONCRMTYPEDELETE was missed): the
    bind of its events is refused (ERROR_EVENT_NOT_FOUND), or, its fields not cached, crm.item.fields
    answers NOT_FOUND. Once, the types are asked again and the scan starts over, instead of the full
    resync failing until the cache ages out (seen in CI: a test process's cache of another emulator
    on the same port)."""
    run(emu, tokens, state, tmp_path, SyncMode.FULL_RESYNC)  # caches the portal's real types
    types, _ = state.cached(PORTAL, "types")
    assert types, "the seeded portal has smart-process types"
    state.cache(PORTAL, "types", [*types, [9999, "Deleted since"]])
    if fields_cached:
        fields, _ = state.cached(PORTAL, f"fields:item:{types[0][0]}")
        state.cache(PORTAL, "fields:item:9999", fields)

    run(emu, tokens, state, tmp_path, SyncMode.FULL_RESYNC)

    assert [list(t) for t in state.cached(PORTAL, "types")[0]] == [list(t) for t in types]
    assert compare(emu, duckdb_rows(str(tmp_path / "wh.duckdb"))) == []
