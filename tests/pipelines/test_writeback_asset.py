"""A declared write-back as operators run it: the Dagster asset of `pipelines.writeback.writeback_asset`.

Materialized in process with the real resources against the emulator and a DuckDB file: the first run
is a dry run (counts and a sample in the metadata, nothing written), a run with ``dry_run: false``
pushes, and the ``pushed_without_errors`` check fails, with the key and the Bitrix24 error, while a row
cannot be pushed. A portal whose plan lacks ``rest_auth_connector`` fails the run with the loop
explanation and writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from connectors.sync.portal import PortalSync
from connectors.sync.steps import run_once
from emulator.testing import ThreadEmulator, run_emulator
from pipelines.assets import asset_key
from pipelines.partitions import portals
from pipelines.writeback import CHECK, writeback_asset, writeback_key, writeback_op_name
from tests.pipelines.conftest import install_default_portal, resources_for

LEADS = 30
lead_scores = writeback_asset("lead_scores", view="lead_scores", deps=[asset_key("leads")])


@pytest.fixture
def emu() -> Iterator[ThreadEmulator]:
    counts = {"deal": 3, "contact": 3, "company": 2, "lead": LEADS, "activity": 0, "item": 0}
    with run_emulator(limits=False, counts=counts, smart_process_types=0) as running:
        running.world.portal("default").crm.add_user_field("lead", "SCORE", "double")
        yield running


def prepared(emu: ThreadEmulator, tmp_path: Path, instance: dg.DagsterInstance) -> tuple[dict, str]:
    """Resources of an installed portal whose leads are synced, and a view scoring them (id 7: bad)."""
    state_path, warehouse_path = tmp_path / "state.sqlite", tmp_path / "wh.duckdb"
    key = install_default_portal(emu, state_path)
    resources = resources_for(emu, state_path, warehouse_path)
    with resources["bitrix24"].client(key) as client, resources["warehouse"].open() as warehouse:
        run_once(PortalSync(key, client, warehouse, tmp_path / "staging"), "full_resync")
    with duckdb.connect(str(warehouse_path)) as connection:
        connection.execute("CREATE VIEW lead_scores AS SELECT portal, 'lead' AS entity_kind, id, "
                           "CASE WHEN id = 7 THEN 'n/a' ELSE CAST(id * 2.5 AS VARCHAR) END AS UF_CRM_SCORE "
                           "FROM leads_current")
    instance.add_dynamic_partitions(portals.name, [key])
    return resources, key


def materialize(resources: dict, key: str, instance: dg.DagsterInstance, **config) -> dg.ExecuteInProcessResult:
    run_config = {"ops": {writeback_op_name("lead_scores"): {"config": config}}} if config else None
    return dg.materialize([lead_scores], resources=resources, partition_key=key, instance=instance,
                          run_config=run_config, raise_on_error=False)


def metadata(result: dg.ExecuteInProcessResult) -> dict:
    (materialization,) = result.asset_materializations_for_node(writeback_op_name("lead_scores"))
    return {name: value.value for name, value in materialization.metadata.items()}


def check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (evaluation,) = result.get_asset_check_evaluations()
    assert (evaluation.asset_key, evaluation.check_name) == (writeback_key("lead_scores"), CHECK)
    return evaluation


def test_a_dry_run_comes_first_then_a_real_run_pushes_and_the_check_shows_the_refused_row(
        emu: ThreadEmulator, tmp_path: Path, instance: dg.DagsterInstance) -> None:
    resources, key = prepared(emu, tmp_path, instance)

    dry = materialize(resources, key, instance)
    assert dry.success
    shown = metadata(dry)
    assert (shown["dry_run"], shown["rows_compared"], shown["changed"], shown["pushed"]) == (True, LEADS, LEADS, 0)
    assert shown["sample"][0] == {"key": "lead 1", "field": "UF_CRM_SCORE", "warehouse": None, "new": "2.5"}
    assert check(dry).passed and emu.writes("lead") == []

    real = materialize(resources, key, instance, dry_run=False)
    assert real.success
    shown = metadata(real)
    assert (shown["dry_run"], shown["pushed"], shown["failed"], shown["failing"]) == (False, LEADS - 1, 1, 1)
    assert shown["requests"] >= 2
    evaluation = check(real)
    assert not evaluation.passed
    assert evaluation.metadata["examples"].value == [
        {"key": "lead 7", "error": "crm.lead.update: <empty code>: Field 'UF_CRM_SCORE' has an invalid value."}]
    scores = {row["id"]: row["fields"]["UF_CRM_SCORE"] for row in emu.truth("lead")}
    assert scores == {i: None if i == 7 else f"{i * 2.5:.2f}" for i in range(1, LEADS + 1)}


def test_rows_without_a_usable_key_fail_the_check_too(
        emu: ThreadEmulator, tmp_path: Path, instance: dg.DagsterInstance) -> None:
    """A row whose id is no id has no journal entry to fail under; the check still counts it."""
    resources, key = prepared(emu, tmp_path, instance)
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as connection:
        connection.execute("CREATE OR REPLACE VIEW lead_scores AS SELECT portal, 'lead' AS entity_kind, "
                           "CASE WHEN id = 3 THEN -3 ELSE id END AS id, CAST(id * 2.5 AS VARCHAR) AS UF_CRM_SCORE "
                           "FROM leads_current")

    real = materialize(resources, key, instance, dry_run=False)
    assert real.success
    assert (metadata(real)["pushed"], metadata(real)["failing"]) == (LEADS - 1, 1)
    evaluation = check(real)
    assert not evaluation.passed
    assert evaluation.metadata["examples"].value == [{"key": "lead", "error": "id -3 is not a positive integer"}]


def test_a_portal_without_auth_connector_fails_the_run_with_the_loop_explanation(
        emu: ThreadEmulator, tmp_path: Path, instance: dg.DagsterInstance) -> None:
    resources, key = prepared(emu, tmp_path, instance)
    emu.patch_portal(plan="standard")

    result = materialize(resources, key, instance, dry_run=False)

    assert not result.success
    (failure,) = [event for event in result.all_events if event.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert "rest_auth_connector" in message and "come back through the offline queue" in message
    assert emu.writes("lead") == []
