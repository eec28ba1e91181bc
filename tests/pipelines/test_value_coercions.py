"""The value policy as operators see it: the sync job's metadata and the ``value_coercions`` check.

The real sync job (the graph-backed CRM assets and their checks) runs in process against the emulator
and a DuckDB file. When the last sync stored values as NULL because they did not fit their column,
the deals asset reports how many (``values_nulled``) and which (per table and column, with examples),
and its ``value_coercions`` check warns with those examples; otherwise the check passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from connectors.receiver import portal_key
from connectors.state import Portal, open_state_store
from emulator.events import Origin
from emulator.testing import ThreadEmulator, run_emulator
from pipelines.assets import bitrix24_crm
from pipelines.health import ENTITY_CHECKS
from pipelines.jobs import FULL_RESYNC_JOB, SYNC_JOB
from pipelines.partitions import portals
from pipelines.resources import Bitrix24Resource, WarehouseResource
from pipelines.tables import asset_key

DEALS = asset_key("deals")


@pytest.fixture
def emu() -> Iterator[ThreadEmulator]:
    with run_emulator(limits=False) as running:
        running.world.portal("default").crm.add_user_field("deal", "RATE", "double")
        yield running


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as test_instance:
        yield test_instance


def job_definitions(emu: ThreadEmulator, tmp_path: Path) -> tuple[dg.Definitions, str]:
    state_path = tmp_path / "state.sqlite"
    tokens = emu.install_tokens()
    key = portal_key(tokens["client_endpoint"])
    with open_state_store(state_path) as state:
        state.save_portal(Portal(key=key, member_id="member", domain="emulator",
                                 client_endpoint=tokens["client_endpoint"], application_token="app-token",
                                 installed_at=datetime.now(UTC)))
        state.save_token(key, tokens)
    defs = dg.Definitions(
        assets=[bitrix24_crm], asset_checks=ENTITY_CHECKS, jobs=[SYNC_JOB, FULL_RESYNC_JOB],
        resources={"bitrix24": Bitrix24Resource(client_id=emu.client_id, client_secret=emu.client_secret,
                                                oauth_token_url=f"{emu.url}/oauth/token/",
                                                state_store=str(state_path)),
                   "warehouse": WarehouseResource(url=str(tmp_path / "wh.duckdb"))})
    return defs, key


def deals_check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    return next(evaluation for evaluation in result.get_asset_check_evaluations()
                if evaluation.asset_key == DEALS and evaluation.check_name == "value_coercions")


def deals_metadata(result: dg.ExecuteInProcessResult) -> dict:
    materialization = next(m for m in result.asset_materializations_for_node("bitrix24_crm")
                           if m.asset_key == DEALS)
    return {key: value.value for key, value in materialization.metadata.items()}


def test_a_sync_that_nulled_values_reports_them_and_its_check_warns_with_examples(
        emu: ThreadEmulator, tmp_path: Path, instance: dg.DagsterInstance) -> None:
    defs, key = job_definitions(emu, tmp_path)
    instance.add_dynamic_partitions(portals.name, [key])
    clean = defs.resolve_job_def("full_resync").execute_in_process(instance=instance, partition_key=key)
    assert clean.success
    assert deals_metadata(clean)["values_nulled"] == 0
    assert deals_check(clean).passed

    crm = emu.world.portal("default").crm
    crm.write("deal", "update", 3, {"TITLE": "rate unknown"}, Origin(user_id=2))
    with crm.portal.lock:
        crm.table("deal").rows[3] = {**crm.table("deal").rows[3], "UF_CRM_RATE": "NaN"}
    odd = defs.resolve_job_def("sync").execute_in_process(instance=instance, partition_key=key)

    assert odd.success
    metadata = deals_metadata(odd)
    assert metadata["values_nulled"] == 1 and metadata["rows_upserted"] == 1
    expected = {"deals": {"uf_crm_rate": {"count": 1, "examples": [[3, "'NaN'"]]}}}
    assert metadata["value_coercions"] == expected
    check = deals_check(odd)
    assert not check.passed and check.severity is dg.AssetCheckSeverity.WARN
    assert check.metadata["values_nulled"].value == 1
    assert check.metadata["columns"].value == expected
