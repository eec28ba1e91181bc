"""The README's three analyst questions, run as written, answer what the portal really holds.

The SQL is taken from the README's "For analysts" section, run on the DuckDB snapshot through the
same shell ``make sql`` opens, and on PostgreSQL (schema name swapped), after the product loaded an
emulated portal (entities, reference data, stage history) that also saw live changes. Each answer is
compared with the ground truth computed straight from the emulator's store.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from connectors.bitrix24 import Bitrix24Client
from connectors.sync.portal import PortalSync
from connectors.sync.reference import refresh_reference, sync_stage_history
from connectors.sync.steps import run_once
from connectors.warehouse.analytics import analytics_schema
from connectors.warehouse.duckdb_warehouse import DuckDBWarehouse
from connectors.warehouse.sql_warehouse import SqlWarehouse
from emulator.crm.origin import Origin
from emulator.testing import ThreadEmulator, run_emulator
from tests.reference.conftest import PORTAL

README = Path(__file__).resolve().parents[2] / "README.md"
COUNTS = {"deal": 400, "contact": 60, "company": 20, "lead": 80, "activity": 20, "item": 30}


def readme_questions() -> list[str]:
    section = README.read_text(encoding="utf-8").split("## For analysts", 1)[1].split("\n## ", 1)[0]
    questions = re.findall(r"```sql\n(.*?)```", section, re.S)
    assert len(questions) == 3, "the analysts' section shows three questions"
    return questions


@pytest.fixture
def emu() -> ThreadEmulator:
    with run_emulator(limits=False, counts=COUNTS) as running:
        crm = running.world.portal("default").crm
        for deal_id in range(1, 60):  # live changes on top of the seed: stage moves and deletions
            row = crm.table("deal").rows[deal_id]
            stages = crm.reference.pipeline(int(row["CATEGORY_ID"])).stage_ids()
            target = stages[(stages.index(row["STAGE_ID"]) + 2) % len(stages)]
            crm.write("deal", "update", deal_id, {"STAGE_ID": target}, Origin(user_id=2))
        for deal_id in (70, 71, 72):
            crm.write("deal", "delete", deal_id, None, Origin(user_id=2))
        yield running


def load(client: Bitrix24Client, warehouse: SqlWarehouse, staging: Path) -> None:
    run_once(PortalSync(PORTAL, client, warehouse, staging), "full_resync")
    refresh = refresh_reference(client, warehouse, PORTAL)
    sync_stage_history(client, warehouse, PORTAL, refresh.smart_process_types)


# --- ground truth from the emulator's store -----------------------------------------------------------

def truth(emu: ThreadEmulator) -> tuple[dict, dict, dict]:
    portal = emu.world.portal("default")
    crm = portal.crm
    reference = crm.reference
    rates = {currency.code: float(currency.amount) for currency in reference.currencies}
    revenue: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    managers: dict[tuple[str, str, bool], list[int]] = defaultdict(lambda: [0, 0])
    for row in crm.table("deal").rows.values():
        pipeline = reference.pipeline(int(row["CATEGORY_ID"]))
        stage = next(s.name for s in pipeline.stages if pipeline.stage_id(s.code) == row["STAGE_ID"])
        revenue[(pipeline.name, stage)][0] += 1
        revenue[(pipeline.name, stage)][1] += float(row["OPPORTUNITY"]) * rates[row["CURRENCY_ID"]]
        user = portal.users[int(row["ASSIGNED_BY_ID"])]
        key = (reference.departments[user.departments[0]].name, user.name, user.active)
        managers[key][0] += 1
        managers[key][1] += row["STAGE_SEMANTIC_ID"] == "S"
    moves: dict[tuple[str, str], list[float]] = defaultdict(list)
    by_owner: dict[int, list[tuple[int, int, dict]]] = defaultdict(list)
    for row in reference.history(2).rows:
        by_owner[row["OWNER_ID"]].append((crm.clock.parse(row["CREATED_TIME"]), row["ID"], row))
    for rows in by_owner.values():
        rows.sort(key=lambda entry: entry[:2])
        for (entered, _, row), (left, _, _) in pairwise(rows):
            pipeline = reference.pipeline(row["CATEGORY_ID"])
            stage = next(s.name for s in pipeline.stages if pipeline.stage_id(s.code) == row["STAGE_ID"])
            moves[(pipeline.name, stage)].append(left - entered)
    return ({key: (count, round(total, 2)) for key, (count, total) in revenue.items()},
            {key: (len(seconds), round(sum(seconds) / len(seconds) / 86400, 1)) for key, seconds in moves.items()},
            {key: tuple(counts) for key, counts in managers.items()})


def check_answers(answers: list[pd.DataFrame], emu: ThreadEmulator) -> None:
    revenue, time_in_stage, managers = truth(emu)
    first, second, third = answers
    assert list(first.columns) == ["pipeline_name", "stage_name", "deals", "revenue_usd"]
    got = {(row.pipeline_name, row.stage_name): (row.deals, float(row.revenue_usd)) for row in first.itertuples()}
    assert got.keys() == revenue.keys()
    for key, (count, total) in revenue.items():
        assert got[key][0] == count and abs(got[key][1] - total) <= 0.011, key
    got = {(row.pipeline_name, row.stage_name): (row.moves, float(row.avg_days)) for row in second.itertuples()}
    assert got.keys() == time_in_stage.keys()
    for key, (count, days) in time_in_stage.items():
        assert got[key][0] == count and abs(got[key][1] - days) <= 0.051, key
    got = {(row.department, row.manager, bool(row.active)): (row.deals, row.won) for row in third.itertuples()}
    assert got == managers
    assert any(not active for _, _, active in managers)  # the fired manager's deals are counted


def test_the_readme_questions_answer_the_portals_ground_truth_on_the_duckdb_snapshot(
        emu: ThreadEmulator, client: Bitrix24Client, tmp_path: Path) -> None:
    warehouse = DuckDBWarehouse(tmp_path / "warehouse.duckdb")
    try:
        load(client, warehouse, tmp_path / "staging")
        snapshot = warehouse.publish_snapshot()
    finally:
        warehouse.close()
    with duckdb.connect(str(snapshot), read_only=True) as analyst:
        answers = [analyst.sql(sql).df() for sql in readme_questions()]
    check_answers(answers, emu)

    shell = subprocess.run([sys.executable, "-m", "connectors.warehouse.shell", str(snapshot)],
                           input=readme_questions()[2], capture_output=True, text=True, timeout=60)
    assert shell.returncode == 0 and "Hugo Rossi" in shell.stdout and "department" in shell.stdout


@pytest.mark.postgres
def test_the_readme_questions_run_unchanged_on_postgresql_but_for_the_schema_name(
        emu: ThreadEmulator, client: Bitrix24Client, warehouse_target, tmp_path: Path) -> None:
    if warehouse_target.engine != "postgres":
        pytest.skip("the DuckDB run is the test above")
    warehouse = warehouse_target.open()
    try:
        load(client, warehouse, tmp_path / "staging")
        schema = analytics_schema(warehouse)
        answers = []
        for sql in readme_questions():
            with warehouse._conn.cursor() as cursor:
                cursor.execute(sql.replace("analytics.", f'"{schema}".'))
                answers.append(pd.DataFrame(cursor.fetchall(), columns=[c.name for c in cursor.description]))
        check_answers(answers, emu)
    finally:
        import psycopg

        from tests.warehouse.conftest import PG_DSN

        with psycopg.connect(PG_DSN, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{warehouse_target.options["schema"]}_analytics" CASCADE')
