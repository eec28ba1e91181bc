"""The sync graph as operators see it: what each run materializes, its metadata, and the health checks.

The real jobs run in process against the emulator and a DuckDB file:

* a sync materializes the portal's ``sync_watermark`` every time and an entity asset only when its
  table changed (so an unchanged table never shows as materializing);
* the watermark and entity metadata carry the run's numbers, the value policy's nulls included;
* the ``health_checks`` job's checks pass on a healthy portal and fail on the trouble they name: a
  value stored as NULL (warning, with examples), a reservation left unacknowledged, a stale portal;
* every entity kind of the registry has its asset in the graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from connectors.bitrix24 import EntityRegistry, smart_process_kind
from connectors.warehouse import open_warehouse
from emulator.events import Origin
from emulator.testing import ThreadEmulator, run_emulator
from pipelines.assets import asset_key, bitrix24_crm, offline_queue
from pipelines.health import HEALTH_CHECKS
from pipelines.jobs import FULL_RESYNC_JOB, HEALTH_JOB, SYNC_JOB
from pipelines.partitions import portals
from tests.pipelines.conftest import install_default_portal, resources_for

DEALS = asset_key("deals")


@pytest.fixture
def emu() -> Iterator[ThreadEmulator]:
    with run_emulator(limits=False) as running:
        running.world.portal("default").crm.add_user_field("deal", "RATE", "double")
        yield running


def job_definitions(emu: ThreadEmulator, tmp_path: Path) -> tuple[dg.Definitions, str]:
    state_path = tmp_path / "state.sqlite"
    key = install_default_portal(emu, state_path)
    defs = dg.Definitions(
        assets=[offline_queue, bitrix24_crm], asset_checks=HEALTH_CHECKS, jobs=[SYNC_JOB, FULL_RESYNC_JOB, HEALTH_JOB],
        resources=resources_for(emu, state_path, tmp_path / "wh.duckdb"))
    return defs, key


def health(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    """Runs the health_checks job; ``{(asset name, check name): evaluation}``."""
    result = defs.resolve_job_def("health_checks").execute_in_process(instance=instance)
    assert result.success
    return {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}


def materialized(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    """``{asset name: metadata}`` of what one run materialized."""
    return {m.asset_key.path[-1]: {key: value.value for key, value in m.metadata.items()}
            for m in result.asset_materializations_for_node("bitrix24_crm")}


def test_a_sync_materializes_the_watermark_and_only_the_tables_it_changed(
        emu: ThreadEmulator, tmp_path: Path, instance: dg.DagsterInstance) -> None:
    defs, key = job_definitions(emu, tmp_path)
    instance.add_dynamic_partitions(portals.name, [key])
    full = defs.resolve_job_def("full_resync").execute_in_process(instance=instance, partition_key=key)
    assert full.success
    assert set(materialized(full)) == {"sync_watermark", "deals", "contacts", "companies", "leads", "activities",
                                       "smart_process_items"}

    crm = emu.world.portal("default").crm
    crm.write("deal", "update", 3, {"TITLE": "renamed"}, Origin(user_id=2))
    crm.write("deal", "delete", 4, {}, Origin(user_id=2))
    sync = defs.resolve_job_def("sync").execute_in_process(instance=instance, partition_key=key)
    assert sync.success
    assets = materialized(sync)
    assert set(assets) == {"sync_watermark", "deals"}
    assert assets["deals"]["rows_upserted"] == 1 and assets["deals"]["tombstones"] == 1
    assert assets["deals"]["events"] == 2 and assets["deals"]["values_nulled"] == 0
    watermark = assets["sync_watermark"]
    assert watermark["confirmed_by"] == "sync" and watermark["mode"] == "changes"
    assert watermark["events"] == 2 and watermark["reservations_acked"] >= 1
    assert watermark["tables_changed"] == ["deals"] and watermark["parked_in_error_lane"] == 0
    assert 0 <= watermark["lag_s"] < 60 and watermark["run_http_requests"] > 0

    nothing = defs.resolve_job_def("sync").execute_in_process(instance=instance, partition_key=key)
    assert set(materialized(nothing)) == {"sync_watermark"}

    checks = health(defs, instance)
    assert {name for name, _ in checks} == {"sync_watermark", "deals", "contacts", "companies", "leads",
                                            "activities", "smart_process_items", "reconciliation", "dead_letters"}
    assert all(evaluation.passed for evaluation in checks.values()), checks


def test_every_registered_entity_kind_has_its_asset_in_the_sync_graph() -> None:
    outputs = {key.path[-1] for key in bitrix24_crm.keys}
    for kind in (*EntityRegistry.standard(), smart_process_kind(1038)):
        assert kind.asset in outputs, f"{kind.key} names {kind.asset!r}, which the sync graph lacks"
        assert kind.description


def test_a_reservation_left_unacknowledged_fails_journal_health_and_a_stale_portal_fails_currency(
        emu: ThreadEmulator, tmp_path: Path, instance: dg.DagsterInstance) -> None:
    defs, key = job_definitions(emu, tmp_path)
    instance.add_dynamic_partitions(portals.name, [key])
    checks = health(defs, instance)
    assert not checks["sync_watermark", "every_portal_current"].passed  # installed, never synced
    assert checks["sync_watermark", "every_portal_current"].metadata["stale_examples"].value == [key]
    assert checks["sync_watermark", "journal_healthy"].passed

    assert defs.resolve_job_def("full_resync").execute_in_process(instance=instance, partition_key=key).success
    assert health(defs, instance)["sync_watermark", "every_portal_current"].passed

    with open_warehouse(str(tmp_path / "wh.duckdb")) as wh:
        wh.record_reserved(key, {"stuck-process-id": 3})
        wh.query(f"UPDATE {wh.relation('_cdc_journal')} SET reserved_at = %(at)s WHERE process_id = 'stuck-process-id'",
                 {"at": datetime.now(UTC) - timedelta(hours=1)})
    stuck = health(defs, instance)["sync_watermark", "journal_healthy"]
    assert not stuck.passed
    assert stuck.metadata["examples"].value[0]["portal"] == key


def test_a_sync_that_nulled_values_reports_them_and_its_check_warns_with_examples(
        emu: ThreadEmulator, tmp_path: Path, instance: dg.DagsterInstance) -> None:
    defs, key = job_definitions(emu, tmp_path)
    instance.add_dynamic_partitions(portals.name, [key])
    clean = defs.resolve_job_def("full_resync").execute_in_process(instance=instance, partition_key=key)
    assert clean.success
    assert materialized(clean)["deals"]["values_nulled"] == 0
    assert health(defs, instance)["deals", "value_coercions"].passed

    crm = emu.world.portal("default").crm
    crm.write("deal", "update", 3, {"TITLE": "rate unknown"}, Origin(user_id=2))
    with crm.portal.lock:
        crm.table("deal").rows[3] = {**crm.table("deal").rows[3], "UF_CRM_RATE": "NaN"}
    odd = defs.resolve_job_def("sync").execute_in_process(instance=instance, partition_key=key)

    assert odd.success
    metadata = materialized(odd)["deals"]
    assert metadata["values_nulled"] == 1 and metadata["rows_upserted"] == 1
    expected = {"deals": {"uf_crm_rate": {"count": 1, "examples": [[3, "'NaN'"]]}}}
    assert metadata["value_coercions"] == expected
    assert materialized(odd)["sync_watermark"]["values_nulled"] == 1
    check = health(defs, instance)["deals", "value_coercions"]
    assert not check.passed and check.severity is dg.AssetCheckSeverity.WARN
    assert check.metadata["values_nulled"].value == 1
    assert check.metadata["columns"].value == {f"{key} / deals": expected["deals"]}
