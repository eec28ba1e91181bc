"""Scheduled maintenance in multi-portal runs (`pipelines.fleet`): the full resync, the error-lane drain,
the reconciliation and the reference refresh each work through several portals in one run, report
each portal as its own partition, and let one failing portal fail only its part; the schedules ask
for ceil(P / N) runs over the portals worth the work, below the change syncs in the run queue.

Real parts: the emulator hosting four portals over loopback HTTP, a DuckDB file, a Dagster instance,
the state store on SQLite.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.utils import make_new_run_id

from connectors.state import Portal, open_state_store
from connectors.warehouse import open_warehouse
from emulator.testing import ThreadEmulator
from pipelines import bootstrap
from pipelines.assets import SYNC_WATERMARK
from pipelines.definitions import build_definitions
from pipelines.fleet import FAILED_TAG, MAINTAINED_TAG, FleetConfig, FleetSyncConfig
from pipelines.jobs import FleetReconcileConfig
from pipelines.partitions import portals
from pipelines.resources import Bitrix24Resource, WarehouseResource
from pipelines.sensors import SYNC_PRIORITY
from tests.ground_truth import TABLES, compare, duckdb_rows
from tests.pipelines.conftest import install_portals, resources_for

NAMES = ["north", "south", "east", "west"]
COUNTS = {"deal": 30, "contact": 10, "company": 5, "lead": 10, "activity": 10, "item": 0}


def run(defs: dg.Definitions, instance: dg.DagsterInstance, job: str, op: str,
        config: FleetConfig) -> tuple[dg.ExecuteInProcessResult, dict[str, dict[str, dict]]]:
    """Runs ``job`` with ``config``; (the result, ``{portal: {asset name: metadata}}`` it materialized)."""
    result = defs.resolve_job_def(job).execute_in_process(instance=instance, run_config=dg.RunConfig(ops={op: config}))
    assert result.success
    per_portal: dict[str, dict[str, dict]] = {}
    for event in result.asset_materializations_for_node(op):
        per_portal.setdefault(event.partition, {})[event.asset_key.path[-1]] = {
            key: value.value for key, value in event.metadata.items()}
    return result, per_portal


def refuse_everything(emu: ThreadEmulator, portal: str) -> None:
    """Every call to ``portal`` refused (403 ACCESS_DENIED): its part fails at once, where a 5xx would
    first be retried for seconds by the client's backoff."""
    emu.add_fault("*", "access_denied", portal=portal)


def health(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, dg.AssetCheckEvaluation]:
    result = defs.resolve_job_def("health_checks").execute_in_process(instance=instance)
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def loaded_fleet(emu: ThreadEmulator, tmp_path: Path, instance: dg.DagsterInstance
                 ) -> tuple[dg.Definitions, dict[str, str], str]:
    """Four portals bootstrapped by one ``full_resync_portals`` run in which "south" fails (its part is
    then run again on its own); (definitions, {name: key}, DuckDB path)."""
    state_path, warehouse_path = tmp_path / "state.sqlite3", str(tmp_path / "wh.duckdb")
    keys = install_portals(emu, state_path, NAMES, COUNTS)
    defs = build_definitions(resources_for(emu, state_path, warehouse_path))
    instance.add_dynamic_partitions(portals.name, list(keys.values()))

    refuse_everything(emu, "south")
    result, loaded = run(defs, instance, "full_resync_portals", "full_resync_portal_group",
                         FleetSyncConfig(portals=list(keys.values()), workers=3))
    assert result.output_for_node("full_resync_portal_group") == {"failed": [keys["south"]]}
    assert instance.get_run_by_id(result.run_id).tags[FAILED_TAG] == keys["south"]
    assert set(loaded) == {keys["north"], keys["east"], keys["west"]}
    for tables in loaded.values():  # a full resync reports every table it scanned
        assert {"sync_watermark", "deals", "contacts", "companies", "leads", "activities"} <= set(tables)
        assert tables["sync_watermark"]["mode"] == "full_resync"
    emu.clear_faults(portal="south")
    _, again = run(defs, instance, "full_resync_portals", "full_resync_portal_group",
                   FleetSyncConfig(portals=[keys["south"]]))
    assert set(again) == {keys["south"]}
    for name, key in keys.items():
        assert compare(emu, duckdb_rows(warehouse_path, key), portal=name, tables=TABLES) == [], name
    return defs, keys, warehouse_path


def test_a_full_resync_and_an_error_lane_drain_serve_many_portals_and_a_failing_portal_fails_only_its_part(
        emu: ThreadEmulator, tmp_path: Path, instance: dg.DagsterInstance) -> None:
    defs, keys, warehouse_path = loaded_fleet(emu, tmp_path, instance)

    # North and east each get a deal change the portal refuses to read: parked in their error lanes.
    for name in ("north", "east"):
        emu.write("deal", "update", 3, {"TITLE": f"refused in {name}"}, portal=name)
        emu.add_fault("crm.deal.list", "access_denied", portal=name)
    run(defs, instance, "sync_portals", "drain_portals",
        FleetSyncConfig(portals=[keys["north"], keys["east"]]))
    emu.clear_faults(portal="north")  # north's deal reads again; east's stays refused
    refuse_everything(emu, "west")  # west's whole part fails

    result, drained = run(defs, instance, "drain_error_lanes", "drain_error_lane_portals",
                          FleetSyncConfig(portals=list(keys.values()), workers=3))
    assert result.output_for_node("drain_error_lane_portals") == {"failed": [keys["west"]]}
    assert set(drained) == {keys["north"], keys["south"], keys["east"]}
    assert {key: tables["dead_letters"]["depth"] for key, tables in drained.items()} == {
        keys["north"]: 0, keys["south"]: 0, keys["east"]: 1}
    [parked] = drained[keys["east"]]["dead_letters"]["examples"]
    assert parked["object"] == "deal 3" and "ACCESS_DENIED" in parked["last_error"]
    assert drained[keys["north"]]["deals"]["rows_upserted"] == 1
    for tables in drained.values():
        assert tables["sync_watermark"]["mode"] == "error_lane"

    checks = health(defs, instance)
    assert not checks["every_error_lane_empty"].passed
    assert checks["every_error_lane_empty"].metadata["dead_letters"].value == {keys["east"]: 1}

    emu.clear_faults()
    for name in ("north", "south", "west"):
        assert compare(emu, duckdb_rows(warehouse_path, keys[name]), portal=name, tables=TABLES) == [], name


def test_a_reconciliation_and_a_reference_refresh_serve_many_portals_and_drift_is_named_per_portal(
        emu: ThreadEmulator, tmp_path: Path, instance: dg.DagsterInstance) -> None:
    defs, keys, warehouse_path = loaded_fleet(emu, tmp_path, instance)

    # Rows lost behind the connector's back in north and east: drift the reconciliation must repair.
    with open_warehouse(warehouse_path) as wh:
        for name, lost in (("north", 5), ("east", 7)):
            assert wh.query(f"DELETE FROM {wh.relation('deals')} WHERE portal = %(portal)s AND id = %(id)s "
                            "RETURNING id", {"portal": keys[name], "id": lost})
    refuse_everything(emu, "south")

    result, reconciled = run(defs, instance, "reconcile_portals", "reconcile_portal_group",
                             FleetReconcileConfig(portals=list(keys.values()), workers=3))
    assert result.output_for_node("reconcile_portal_group") == {"failed": [keys["south"]]}
    drift = {key: tables["reconciliation"]["drift"] for key, tables in reconciled.items()}
    assert drift == {keys["north"]: 1, keys["east"]: 1, keys["west"]: 0}
    for name in ("north", "east", "west"):
        assert compare(emu, duckdb_rows(warehouse_path, keys[name]), portal=name, tables=TABLES) == [], name
    checks = health(defs, instance)
    assert not checks["every_portal_in_sync"].passed
    assert checks["every_portal_in_sync"].metadata["drifting"].value == {keys["north"]: 1, keys["east"]: 1}

    result, refreshed = run(defs, instance, "refresh_reference_portals", "refresh_reference_portal_group",
                            FleetConfig(portals=list(keys.values()), workers=3))
    assert result.output_for_node("refresh_reference_portal_group") == {"failed": [keys["south"]]}
    assert set(refreshed) == {keys["north"], keys["east"], keys["west"]}
    for tables in refreshed.values():
        assert set(tables) == {"reference_data", "stage_history", "deal_product_rows"}
        assert tables["reference_data"]["rows_users"] > 0
    with open_warehouse(warehouse_path) as wh:
        users = dict(wh.query(f"SELECT portal, count(*) FROM {wh.relation('users')} GROUP BY portal", {}))
    assert set(users) == set(keys.values())  # south's from its bootstrap (which loads reference data), kept
    assert all(users[key] == refreshed[key]["reference_data"]["rows_users"] for key in refreshed)


def test_the_maintenance_schedules_ask_for_n_portals_per_run_below_the_change_syncs(
        tmp_path: Path, instance: dg.DagsterInstance) -> None:
    state_path = tmp_path / "state.sqlite3"
    loaded = [f"p{number}.bitrix24.com" for number in range(5)]
    never_loaded, uninstalled = "new.bitrix24.com", "gone.bitrix24.com"
    with open_state_store(state_path) as state:
        for key in [*loaded, never_loaded, uninstalled]:
            state.save_portal(Portal(key=key, member_id=key, domain=key, client_endpoint=f"https://{key}/rest/",
                                     application_token="app-token", installed_at=datetime.now(UTC)))
        state.mark_uninstalled(uninstalled)
    instance.add_dynamic_partitions(portals.name, [*loaded, never_loaded, uninstalled])
    for key in [*loaded, uninstalled]:
        instance.report_runless_asset_event(dg.AssetMaterialization(SYNC_WATERMARK, partition=key))
    resources = {"bitrix24": Bitrix24Resource(client_id="app", client_secret="secret", state_store=str(state_path),
                                              maintenance_portals_per_run=2),
                 "warehouse": WarehouseResource(url=str(tmp_path / "wh.duckdb"))}
    defs = build_definitions(resources)

    for name, op in (("error_lane_drain", "drain_error_lane_portals"),
                     ("hourly_reconciliation", "reconcile_portal_group"),
                     ("reference_refresh_schedule", "refresh_reference_portal_group")):
        context = dg.build_schedule_context(instance=instance, resources=resources,
                                            scheduled_execution_time=datetime(2026, 1, 1, tzinfo=UTC))
        requests = defs.resolve_schedule_def(name).evaluate_tick(context).run_requests
        groups = [request.run_config["ops"][op]["config"]["portals"] for request in requests]
        assert groups == [loaded[0:2], loaded[2:4], loaded[4:5]], name  # ceil(5 / 2) runs
        assert [request.tags[MAINTAINED_TAG].split(",") for request in requests] == groups
        assert all(int(request.tags["dagster/priority"]) < int(SYNC_PRIORITY) for request in requests)
        assert len({request.run_key for request in requests}) == len(requests)


def test_the_error_lane_drain_asks_only_for_portals_that_reported_parked_messages_or_nothing(
        tmp_path: Path, instance: dg.DagsterInstance) -> None:
    """Retrying every empty error lane every 15 minutes cost a thousand portals 40 runs a tick."""
    state_path = tmp_path / "state.sqlite3"
    loaded = [f"p{number}.bitrix24.com" for number in range(4)]
    with open_state_store(state_path) as state:
        for key in loaded:
            state.save_portal(Portal(key=key, member_id=key, domain=key, client_endpoint=f"https://{key}/rest/",
                                     application_token="app-token", installed_at=datetime.now(UTC)))
        state.record_progress(loaded[0], parked=0)
        state.record_progress(loaded[1], parked=3)
        state.record_progress(loaded[2], parked=0)
        # loaded[3]: no run has reported yet, so it may hold some
    instance.add_dynamic_partitions(portals.name, loaded)
    for key in loaded:
        instance.report_runless_asset_event(dg.AssetMaterialization(SYNC_WATERMARK, partition=key))
    resources = {"bitrix24": Bitrix24Resource(client_id="app", client_secret="secret", state_store=str(state_path),
                                              maintenance_portals_per_run=25),
                 "warehouse": WarehouseResource(url=str(tmp_path / "wh.duckdb"))}
    context = dg.build_schedule_context(instance=instance, resources=resources,
                                        scheduled_execution_time=datetime(2026, 1, 1, tzinfo=UTC))
    schedules = build_definitions(resources)
    [request] = schedules.resolve_schedule_def("error_lane_drain").evaluate_tick(context).run_requests
    assert request.run_config["ops"]["drain_error_lane_portals"]["config"]["portals"] == [loaded[1], loaded[3]]
    # Reconciliation still covers every portal.
    reconcile = schedules.resolve_schedule_def("hourly_reconciliation").evaluate_tick(context).run_requests
    groups = [r.run_config["ops"]["reconcile_portal_group"]["config"]["portals"] for r in reconcile]
    assert [key for group in groups for key in group] == loaded


def test_a_bootstrap_waits_for_a_run_that_drains_the_portal_instead_of_skipping_it(
        emu: ThreadEmulator, tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch) -> None:
    """A change sync started just before the portal's resync holds its drain claim; skipping the portal
    would end the bootstrap run as a success with the portal never loaded."""
    monkeypatch.setattr(bootstrap, "CLAIM_POLL_S", 0.2)
    state_path, warehouse_path = tmp_path / "state.sqlite3", str(tmp_path / "wh.duckdb")
    keys = install_portals(emu, state_path, ["north"], COUNTS)
    defs = build_definitions(resources_for(emu, state_path, warehouse_path))
    instance.add_dynamic_partitions(portals.name, list(keys.values()))
    syncing = dg.DagsterRun(job_name="sync_portals", run_id=make_new_run_id(), status=dg.DagsterRunStatus.STARTED)
    instance.add_run(syncing)
    with open_state_store(state_path) as state:
        assert state.claim_drain(keys["north"], syncing.run_id, lambda owner: True)

    def sync_ends() -> None:
        with open_state_store(state_path) as state:
            state.release_drain(keys["north"], syncing.run_id)

    timer = threading.Timer(1.5, sync_ends)
    timer.start()
    try:
        result, loaded = run(defs, instance, "full_resync_portals", "full_resync_portal_group",
                             FleetSyncConfig(portals=list(keys.values())))
    finally:
        timer.cancel()
    assert result.output_for_node("full_resync_portal_group") == {"failed": []}
    assert loaded[keys["north"]]["sync_watermark"]["mode"] == "full_resync"
    assert compare(emu, duckdb_rows(warehouse_path, keys["north"]), portal="north", tables=TABLES) == []
