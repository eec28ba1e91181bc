"""Write-back (connectors.sync.writeback) against the emulator, on a DuckDB file and on PostgreSQL.

A view in the warehouse scores the leads into a user field (``UF_CRM_SCORE``); the write-back pushes
the scores with the product's connector key. What must hold (issue 12): the portal's leads hold the
scores; the product's own queue gets no row for those writes while a user's edit of the same lead
still arrives; a second run pushes nothing; a crash between two batches and a re-run leave every lead
right with no object written twice (the emulator counts writes per object and connector); per-row
refusals are reported with the key and the Bitrix24 error and never stop the rest; a plan without
``rest_auth_connector`` refuses before writing anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import psycopg
import pytest

from connectors.bitrix24 import Bitrix24Client, FileTokenStore, LoopAvoidanceUnavailable, OfflineQueue
from connectors.sync.portal import DEFAULT_CONNECTOR, PortalSync
from connectors.sync.steps import run_once
from connectors.sync.writeback import (
    WriteBackBusy,
    WriteBackError,
    WriteBackReport,
    WriteBackSpec,
    failing,
    write_back,
)
from connectors.warehouse import PushStatus
from emulator.testing import ThreadEmulator, run_emulator
from tests.sync.conftest import PORTAL, app_keys
from tests.warehouse.conftest import WarehouseTarget

LEADS = 120  # three batches of 50 updates
COUNTS = {"deal": 5, "contact": 5, "company": 3, "lead": LEADS, "activity": 0, "item": 0}
SCORE = "UF_CRM_SCORE"
# The analysts' model: a score from the lead's source and id, two decimals (the field keeps two).
SCORE_SQL = ("(id % 7) * 12.5 + CASE WHEN source_id = 'WEB' THEN 5 ELSE 0 END")
SPEC = WriteBackSpec.from_view("lead_scores", "lead_scores")


@pytest.fixture
def emu() -> Iterator[ThreadEmulator]:
    with run_emulator(limits=False, counts=COUNTS, seed=3, smart_process_types=0) as running:
        running.world.portal(PORTAL).crm.add_user_field("lead", "SCORE", "double", label="Lead score")
        yield running


def expected_score(fields: dict) -> float:
    return (int(fields["ID"]) % 7) * 12.5 + (5 if fields.get("SOURCE_ID") == "WEB" else 0)


def full_sync(emu: ThreadEmulator, tokens: FileTokenStore, target: WarehouseTarget, staging: Path,
              mode: str = "full_resync") -> None:
    with Bitrix24Client(app_keys(emu).session(PORTAL, tokens)) as client, target.open() as warehouse:
        run_once(PortalSync(PORTAL, client, warehouse, staging), mode)


def create_view(target: WarehouseTarget, select: str) -> None:
    """What an analyst (or dbt) does in the warehouse: a view with one row per lead to update."""
    if target.engine == "duckdb":
        with duckdb.connect(target.target) as connection:
            connection.execute("DROP VIEW IF EXISTS lead_scores")
            connection.execute(f"CREATE VIEW lead_scores AS {select.format(leads='leads')}")
    else:
        schema = target.options["schema"]
        with psycopg.connect(target.target, autocommit=True) as connection:
            connection.execute(f'DROP VIEW IF EXISTS "{schema}".lead_scores')
            connection.execute(f'CREATE VIEW "{schema}".lead_scores AS ' + select.format(leads=f'"{schema}".leads'))


SCORES_VIEW = (f"SELECT portal, 'lead' AS entity_kind, id, {SCORE_SQL} AS uf_crm_score "
               "FROM {leads} WHERE _deleted_at IS NULL")


def push(emu: ThreadEmulator, tokens: FileTokenStore, target: WarehouseTarget, **options) -> WriteBackReport:
    with Bitrix24Client(app_keys(emu).session(PORTAL, tokens)) as client, target.open() as warehouse:
        return write_back(options.pop("spec", SPEC), OfflineQueue(client, DEFAULT_CONNECTOR), warehouse, PORTAL,
                          **options)


def portal_scores(emu: ThreadEmulator) -> dict[int, tuple[float | None, float]]:
    """lead id -> (score the portal holds, score the view computes)."""
    return {row["id"]: (None if row["fields"][SCORE] in (None, "") else float(row["fields"][SCORE]),
                        expected_score(row["fields"]))
            for row in emu.truth("lead") if not row["deleted"]}


def our_writes(emu: ThreadEmulator) -> dict[int, int]:
    """lead id -> updates received from our app with our connector key."""
    return {row["id"]: row["count"] for row in emu.writes("lead")
            if row["client_id"] == emu.client_id and row["connector"] == DEFAULT_CONNECTOR and row["op"] == "update"}


def our_queue(emu: ThreadEmulator) -> list[dict]:
    return [row for row in emu.queue() if row["CONNECTOR_ID"] == DEFAULT_CONNECTOR]


def warehouse_scores(target: WarehouseTarget) -> dict[int, float | None]:
    with target.open() as warehouse:
        rows = warehouse.query(f"SELECT id, uf_crm_score FROM {warehouse.relation('leads')} "
                               "WHERE portal = %(portal)s", {"portal": PORTAL})
    return {int(entity_id): None if score is None else float(score) for entity_id, score in rows}


def test_lead_scores_are_pushed_once_without_echo_while_a_user_edit_still_arrives(
        emu: ThreadEmulator, tokens: FileTokenStore, warehouse_target: WarehouseTarget, tmp_path: Path) -> None:
    full_sync(emu, tokens, warehouse_target, tmp_path / "s0")
    create_view(warehouse_target, SCORES_VIEW)

    preview = push(emu, tokens, warehouse_target)  # dry run: the default
    assert (preview.dry_run, preview.rows_compared, preview.changed, preview.pushed) == (True, LEADS, LEADS, 0)
    assert len(preview.sample) == 10 and preview.sample[0]["field"] == SCORE
    assert our_writes(emu) == {} and all(held is None for held, _ in portal_scores(emu).values())

    report = push(emu, tokens, warehouse_target, dry_run=False)
    assert (report.changed, report.pushed, report.failed, report.deferred) == (LEADS, LEADS, 0, 0)
    # feature.get + crm.lead.fields + 3 batches of 50 updates + 1 re-read of the 120 leads
    assert report.requests == 6
    scores = portal_scores(emu)
    assert all(held == wanted for held, wanted in scores.values()), scores
    assert our_writes(emu) == dict.fromkeys(scores, 1)
    assert our_queue(emu) == [], "our own writes came back through our queue"
    assert warehouse_scores(warehouse_target) == {i: wanted for i, (_, wanted) in scores.items()}

    emu.write("lead", "update", 5, {"TITLE": "Called back"})  # a person edits a scored lead
    queued = our_queue(emu)
    assert [(row["EVENT_NAME"], row["EVENT_DATA"]["FIELDS"]["ID"]) for row in queued] == [("ONCRMLEADUPDATE", 5)]

    again = push(emu, tokens, warehouse_target, dry_run=False)
    assert (again.changed, again.pushed, again.failed) == (0, 0, 0)
    assert our_writes(emu) == dict.fromkeys(scores, 1)

    full_sync(emu, tokens, warehouse_target, tmp_path / "s1", mode="changes")  # the edit reaches the warehouse
    with warehouse_target.open() as warehouse:
        assert warehouse.query(f"SELECT title, uf_crm_score FROM {warehouse.relation('leads')} WHERE id = 5",
                               {}) == [("Called back", scores[5][1])]


CRASHING_PUSH = """
import sys
from connectors.bitrix24 import Bitrix24Client, FileTokenStore, OAuthApp, OfflineQueue
from connectors.sync.writeback import WriteBackSpec, write_back
from connectors.warehouse import open_warehouse
client_id, secret, token_url, tokens_dir, target, schema = sys.argv[1:7]
app = OAuthApp(client_id, secret, token_url=token_url)
with Bitrix24Client(app.session("default", FileTokenStore(tokens_dir))) as client, \\
        open_warehouse(target, schema=schema) as warehouse:
    write_back(WriteBackSpec.from_view("lead_scores", "lead_scores"), OfflineQueue(client, "b24wh"), warehouse,
               "default", dry_run=False)
"""


@pytest.mark.parametrize("point", ["writeback_after_batch", "writeback_after_intent"])
def test_a_crash_between_batches_and_a_rerun_leave_every_lead_right_with_no_write_twice(
        emu: ThreadEmulator, tokens: FileTokenStore, warehouse_target: WarehouseTarget, tmp_path: Path,
        point: str) -> None:
    full_sync(emu, tokens, warehouse_target, tmp_path / "s0")
    create_view(warehouse_target, SCORES_VIEW)
    env = {**os.environ, "B24WH_FAILPOINT": point, "B24WH_FAILPOINT_ONCE": str(tmp_path / "crashed")}
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_PUSH, emu.client_id, emu.client_secret, emu.token_url,
         str(tmp_path / "tokens"), warehouse_target.target, warehouse_target.options.get("schema", "bitrix24")],
        env=env, capture_output=True, text=True, timeout=120)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    landed = 50 if point == "writeback_after_batch" else 0
    assert sum(our_writes(emu).values()) == landed
    with warehouse_target.open() as warehouse:
        assert [entry.status for entry in warehouse.pushes(PORTAL, "lead_scores")] == [PushStatus.INTENT] * 50

    report = push(emu, tokens, warehouse_target, dry_run=False)

    assert (report.recovered, report.recovered_landed) == (50, landed)
    assert (report.pushed, report.failed) == (LEADS - landed, 0)
    scores = portal_scores(emu)
    assert all(held == wanted for held, wanted in scores.values()), scores
    assert our_writes(emu) == dict.fromkeys(scores, 1), "an object was written twice"
    assert warehouse_scores(warehouse_target) == {i: wanted for i, (_, wanted) in scores.items()}
    assert our_queue(emu) == []
    with warehouse_target.open() as warehouse:
        assert {entry.status for entry in warehouse.pushes(PORTAL, "lead_scores")} == {PushStatus.DONE}


def test_a_refused_row_is_reported_with_its_key_and_error_and_the_rest_are_pushed(
        emu: ThreadEmulator, tokens: FileTokenStore, warehouse_target: WarehouseTarget, tmp_path: Path) -> None:
    full_sync(emu, tokens, warehouse_target, tmp_path / "s0")
    # Lead 7 gets a value the field refuses; lead 9999 does not exist.
    create_view(warehouse_target, "SELECT portal, 'lead' AS entity_kind, id, CASE WHEN id = 7 THEN 'n/a' "
                                  f"ELSE CAST({SCORE_SQL} AS VARCHAR) END AS \"UF_CRM_SCORE\" "
                                  "FROM {leads} WHERE _deleted_at IS NULL "
                                  "UNION ALL SELECT portal, 'lead', 9999, '1' FROM {leads} WHERE id = 1")

    capped = push(emu, tokens, warehouse_target, dry_run=False, max_changes=100)

    assert (capped.rows_compared, capped.changed, capped.deferred) == (LEADS + 1, LEADS, LEADS - 100)
    assert (capped.pushed, capped.failed) == (99, 2)
    assert [error.as_dict() for error in capped.errors] == [
        {"key": "lead 9999", "error": "not in the warehouse (deleted, or not synced yet)"},
        {"key": "lead 7", "error": "crm.lead.update: <empty code>: Field 'UF_CRM_SCORE' has an invalid value."}]
    with warehouse_target.open() as warehouse:
        assert failing(warehouse, PORTAL, "lead_scores")[0] == 2

    rest = push(emu, tokens, warehouse_target, dry_run=False)
    # Lead 7's refused value is not sent again (it would fail, or be rewritten, on every run); it stays
    # failing in the journal, so the check stays red until the view asks for something else.
    assert (rest.changed, rest.pushed, rest.failed) == (LEADS - 100, LEADS - 100, 1)
    with warehouse_target.open() as warehouse:
        assert failing(warehouse, PORTAL, "lead_scores")[0] == 2

    create_view(warehouse_target, SCORES_VIEW)  # the analyst fixes the view
    fixed = push(emu, tokens, warehouse_target, dry_run=False)
    assert (fixed.changed, fixed.pushed, fixed.failed) == (1, 1, 0)
    with warehouse_target.open() as warehouse:
        assert failing(warehouse, PORTAL, "lead_scores") == (0, [])
    assert all(held == wanted for held, wanted in portal_scores(emu).values())


def test_a_portal_without_rest_auth_connector_refuses_and_explains_the_loop(
        tokens: FileTokenStore, warehouse_target: WarehouseTarget, emu: ThreadEmulator) -> None:
    emu.patch_portal(plan="standard")
    with pytest.raises(LoopAvoidanceUnavailable, match="rest_auth_connector") as refused:
        push(emu, tokens, warehouse_target, dry_run=False)
    assert "come back through the offline queue" in str(refused.value)
    assert emu.writes("lead") == []


def test_thousands_of_updates_travel_fifty_per_request_within_the_portals_rate_limit(tmp_path: Path) -> None:
    # Its own portal with 3,000 leads; once they are synced, the standard limits go on (burst 50,
    # 2 requests/s, facts §6.1): the push's 64 requests overflow the burst, and the client's throttle
    # must pace them without one 503.
    counts = {**COUNTS, "lead": 3_000}
    with run_emulator(limits=False, counts=counts, seed=3, smart_process_types=0) as limited:
        limited.world.portal(PORTAL).crm.add_user_field("lead", "SCORE", "double")
        store = FileTokenStore(tmp_path / "limited-tokens")
        store.save(PORTAL, limited.install_tokens())
        target = WarehouseTarget("duckdb", str(tmp_path / "limited.duckdb"), {})
        full_sync(limited, store, target, tmp_path / "s0")
        create_view(target, SCORES_VIEW)
        limited.patch_portal(limits={"enabled": True})
        limited.reset_stats()

        report = push(limited, store, target, dry_run=False, max_changes=5_000)

        stats = limited.stats()
        assert (report.pushed, report.failed) == (3_000, 0)
        # feature.get, crm.lead.fields, 60 batches of 50 updates, 2 re-reads (2,500 + 500 leads)
        assert report.requests == stats["http_requests"] == 64
        assert stats["methods"]["crm.lead.update"]["calls"] == 3_000
        assert stats["status"] == {"200": 64}, "the throttle let a request hit the portal's limit"
        assert all(held == wanted for held, wanted in portal_scores(limited).values())


def test_a_column_that_is_no_field_of_the_portal_stops_the_run_before_any_write(
        emu: ThreadEmulator, tokens: FileTokenStore, warehouse_target: WarehouseTarget, tmp_path: Path) -> None:
    full_sync(emu, tokens, warehouse_target, tmp_path / "s0")
    create_view(warehouse_target, "SELECT portal, 'lead' AS entity_kind, id, 1 AS uf_crm_scor FROM {leads}")
    with pytest.raises(WriteBackError, match="'uf_crm_scor' is not a field of lead"):
        push(emu, tokens, warehouse_target, dry_run=False)
    assert emu.writes("lead") == []


def test_smart_process_items_are_written_through_crm_item_update(tmp_path: Path) -> None:
    # crm.item.* speaks camelCase and needs entityTypeId (facts §4.4); the query may name the warehouse
    # columns (title, uf_crm_1_1700000000102) and the kind as item:<entityTypeId>.
    with run_emulator(limits=False, counts={**COUNTS, "lead": 0, "item": 5}, seed=3) as emulator:
        store = FileTokenStore(tmp_path / "item-tokens")
        store.save(PORTAL, emulator.install_tokens())
        target = WarehouseTarget("duckdb", str(tmp_path / "items.duckdb"), {})
        full_sync(emulator, store, target, tmp_path / "s0")
        spec = WriteBackSpec("item_titles", "SELECT 'item:128' AS entity_kind, id, 'Scored ' || CAST(id AS VARCHAR) "
                             "AS title, 2.5 AS uf_crm_1_1700000000102 FROM {items_128} WHERE portal = %(portal)s")

        first = push(emulator, store, target, spec=spec, dry_run=False)
        second = push(emulator, store, target, spec=spec, dry_run=False)

        assert (first.changed, first.pushed, first.failed, second.changed) == (5, 5, 0, 0)
        truth = emulator.truth("item:128")
        assert [(row["fields"]["title"], row["fields"]["ufCrm_1_1700000000102"]) for row in truth] == [
            (f"Scored {row['id']}", 2.5) for row in truth]
        assert [row for row in emulator.queue() if row["CONNECTOR_ID"] == DEFAULT_CONNECTOR] == []


def test_a_query_must_select_its_portal_and_a_row_of_another_portal_is_never_pushed(
        emu: ThreadEmulator, tokens: FileTokenStore, warehouse_target: WarehouseTarget, tmp_path: Path) -> None:
    # Ids start at 1 on every portal: without the filter one portal's scores would land on another's leads.
    with pytest.raises(WriteBackError, match="portal"):
        WriteBackSpec("unfiltered", "SELECT 'lead' AS entity_kind, id, 1 AS uf_crm_score FROM {leads}")

    full_sync(emu, tokens, warehouse_target, tmp_path / "s0")
    spec = WriteBackSpec("foreign", "SELECT 'other.bitrix24.ru' AS portal, 'lead' AS entity_kind, 5 AS id, "
                                    "99 AS uf_crm_score FROM {leads} WHERE portal = %(portal)s AND id = 1")
    report = push(emu, tokens, warehouse_target, spec=spec, dry_run=False)
    assert (report.pushed, report.failed) == (0, 1)
    assert "other.bitrix24.ru" in report.errors[0].error
    assert our_writes(emu) == {}


def test_an_empty_list_clears_a_multiple_field_and_a_time_without_zone_lands_as_utc(
        emu: ThreadEmulator, tokens: FileTokenStore, tmp_path: Path) -> None:
    """Two values that used to go wrong on the wire: ``[]`` vanished from the batch's query string
    (so the field kept its items and every run pushed again), and a time without a zone was read
    in the portal's zone (so the stored time was off by its offset and the push was marked failed)."""
    crm = emu.world.portal(PORTAL).crm
    crm.add_user_field("lead", "TAGS", "string", multiple=True)
    crm.add_user_field("lead", "CALLBACK_AT", "datetime")
    emu.write("lead", "update", 1, {"UF_CRM_TAGS": ["vip", "churn-risk"]})
    target = WarehouseTarget("duckdb", str(tmp_path / "wh.duckdb"), {})
    full_sync(emu, tokens, target, tmp_path / "s0")
    spec = WriteBackSpec("lead_follow_up", "SELECT 'lead' AS entity_kind, id, []::VARCHAR[] AS uf_crm_tags, "
                         "TIMESTAMP '2025-05-01 07:00:00' AS uf_crm_callback_at FROM {leads} "
                         "WHERE portal = %(portal)s AND id = 1")

    first = push(emu, tokens, target, spec=spec, dry_run=False)

    assert (first.changed, first.pushed, first.failed) == (1, 1, 0), first.errors
    [lead] = [row["fields"] for row in emu.truth("lead") if row["id"] == 1]
    assert lead["UF_CRM_TAGS"] in ([], None)
    assert datetime.fromisoformat(lead["UF_CRM_CALLBACK_AT"]) == datetime(2025, 5, 1, 7, tzinfo=UTC)
    again = push(emu, tokens, target, spec=spec, dry_run=False)
    assert (again.changed, again.pushed, again.failed) == (0, 0, 0)


def test_a_second_run_of_the_same_write_back_on_the_same_portal_sends_nothing_while_the_first_pushes(
        emu: ThreadEmulator, tokens: FileTokenStore, warehouse_target: WarehouseTarget, tmp_path: Path) -> None:
    """Both would plan the same changes and send them before either journals its outcome."""
    full_sync(emu, tokens, warehouse_target, tmp_path / "s0")
    create_view(warehouse_target, SCORES_VIEW)
    with warehouse_target.open() as first_run, first_run.exclusive(f"writeback {SPEC.name} {PORTAL}"):
        with pytest.raises(WriteBackBusy, match="another run of it is pushing now; nothing was sent"):
            push(emu, tokens, warehouse_target, dry_run=False)
        assert push(emu, tokens, warehouse_target, dry_run=True).changed == LEADS  # a dry run only reads
        other = WriteBackSpec.from_view("other_scores", "lead_scores")
        assert push(emu, tokens, warehouse_target, spec=other, dry_run=True).changed == LEADS
    assert our_writes(emu) == {}

    done = push(emu, tokens, warehouse_target, dry_run=False)
    assert done.pushed == LEADS and set(our_writes(emu).values()) == {1}
