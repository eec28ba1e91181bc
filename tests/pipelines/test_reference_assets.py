"""The reference assets as Dagster runs them: the ``reference_refresh`` job for one portal partition
loads the dimensions (two requests), appends the stage history, and a second run adds only what is
new. (The schedule's multi-portal runs: tests/pipelines/test_fleet_maintenance.py.)"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb

from emulator.crm.origin import Origin
from emulator.testing import ThreadEmulator
from pipelines.assets import asset_key
from pipelines.partitions import portals
from pipelines.reference import (
    REFERENCE_JOB,
    deal_product_rows,
    reference_data,
    stage_history,
)
from tests.pipelines.conftest import install_default_portal, resources_for


def definitions(emu: ThreadEmulator, tmp_path: Path) -> tuple[dg.Definitions, str]:
    state_path = tmp_path / "state.sqlite"
    key = install_default_portal(emu, state_path)
    defs = dg.Definitions(
        assets=[reference_data, stage_history, deal_product_rows], jobs=[REFERENCE_JOB],
        resources=resources_for(emu, state_path, tmp_path / "wh.duckdb"))
    return defs, key


def metadata(result: dg.ExecuteInProcessResult, name: str) -> dict:
    [materialization] = result.asset_materializations_for_node(f"bitrix24__{name}")
    assert materialization.asset_key == asset_key(name)
    return {key: value.value for key, value in materialization.metadata.items()}


def test_the_reference_job_loads_dimensions_and_appends_new_stage_history(
        emu: ThreadEmulator, tmp_path: Path, instance: dg.DagsterInstance) -> None:
    defs, key = definitions(emu, tmp_path)
    instance.add_dynamic_partitions(portals.name, [key])
    job = defs.resolve_job_def("reference_refresh")

    first = job.execute_in_process(instance=instance, partition_key=key)
    assert first.success
    dimensions = metadata(first, "reference_data")
    assert dimensions["http_requests"] == 2 and dimensions["rows_users"] == 9 and dimensions["rows_crm_types"] == 1
    history = metadata(first, "stage_history")
    crm = emu.world.portal("default").crm
    assert history["rows_added"] == sum(len(h.rows) for h in crm.reference.histories.values())

    crm.write("lead", "add", None, {"TITLE": "walk-in"}, Origin(user_id=3))
    second = job.execute_in_process(instance=instance, partition_key=key)
    assert metadata(second, "stage_history")["rows_added"] == 1

    snapshot = tmp_path / "wh.snapshot.duckdb"
    with duckdb.connect(str(snapshot), read_only=True) as analyst:
        assert analyst.sql("SELECT count(*) FROM analytics.users").fetchall() == [(9,)]

