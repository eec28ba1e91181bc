"""Runs that serve many portals (`pipelines.fleet`): one ``sync_portals`` run drains several portals'
queues, each reported as its own partition; one portal's failure fails only its part; a portal another
live run drains is left alone; afterwards every portal's warehouse equals its ground truth.

Real parts: the emulator hosting four portals over loopback HTTP, a DuckDB file, a Dagster instance.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb

from connectors.state import open_state_store
from emulator.portal import User
from emulator.testing import ThreadEmulator
from pipelines.definitions import build_definitions
from pipelines.fleet import FleetSyncConfig
from pipelines.partitions import portals
from tests.ground_truth import TABLES, compare, duckdb_rows
from tests.pipelines.conftest import install_portals, resources_for

NAMES = ["north", "south", "east", "west"]
COUNTS = {"deal": 40, "contact": 20, "company": 10, "lead": 20, "activity": 20, "item": 0}


def test_one_run_drains_many_portals_and_a_failing_portal_fails_only_its_part(
        emu: ThreadEmulator, tmp_path: Path, instance: dg.DagsterInstance) -> None:
    state_path, warehouse_path = tmp_path / "state.sqlite3", str(tmp_path / "wh.duckdb")
    keys = install_portals(emu, state_path, NAMES, COUNTS)
    defs = build_definitions(resources_for(emu, state_path, warehouse_path))
    instance.add_dynamic_partitions(portals.name, list(keys.values()))
    bootstrap = defs.resolve_job_def("full_resync_portals").execute_in_process(
        instance=instance, run_config=dg.RunConfig(ops={"full_resync_portal_group": FleetSyncConfig(
            portals=list(keys.values()))}))
    assert bootstrap.success and bootstrap.output_for_node("full_resync_portal_group") == {"failed": []}

    for name in NAMES:
        emu.write("deal", "update", 1, {"TITLE": f"changed in {name}"}, portal=name)
        emu.write("deal", "delete", 2, portal=name)
        emu.write("contact", "add", fields={"NAME": f"new in {name}"}, portal=name)
    emu.add_fault("*", "http_500", portal="south")  # its part fails
    # Another live run drains "west" right now: this run must leave it alone.
    busy = instance.create_run_for_job(defs.resolve_job_def("sync"), status=dg.DagsterRunStatus.STARTED)
    with open_state_store(state_path) as state:
        assert state.claim_drain(keys["west"], busy.run_id, lambda owner: True)

    fleet = defs.resolve_job_def("sync_portals")
    config = dg.RunConfig(ops={"drain_portals": FleetSyncConfig(portals=list(keys.values()), workers=3)})
    result = fleet.execute_in_process(instance=instance, run_config=config)
    assert result.success
    drained = {(m.asset_key.path[-1], m.partition) for m in result.asset_materializations_for_node("drain_portals")}
    assert drained == {(asset, keys[name]) for name in ("north", "east")
                       for asset in ("sync_watermark", "deals", "contacts")}
    [output] = [event for event in result.all_node_events if event.event_type_value == "STEP_OUTPUT"]
    metadata = {key: value.value for key, value in output.step_output_data.metadata.items()}
    assert metadata["failed"] == [keys["south"]] and metadata["skipped"] == 1 and metadata["done"] == 2

    # The failed portal's claim was released; once the portal answers again it is drained on its own.
    emu.clear_faults(portal="south")
    instance.report_run_canceled(busy)
    again = fleet.execute_in_process(instance=instance, run_config=dg.RunConfig(ops={"drain_portals": FleetSyncConfig(
        portals=[keys["south"], keys["west"]])}))
    assert again.success
    retried = {m.partition for m in again.asset_materializations_for_node("drain_portals")}
    assert retried == {keys["south"], keys["west"]}

    # Nothing staged is left behind by the portals that were drained.
    staging = Path(instance.storage_directory()) / "bitrix24_staging"
    assert [path for path in staging.glob("*/*") if path.is_dir()] == []

    for name, key in keys.items():
        assert emu.queue(portal=name) == [] or all(row.get("reserved") is None for row in emu.queue(portal=name))
        assert compare(emu, duckdb_rows(warehouse_path, key), portal=name, tables=TABLES) == [], name


def test_a_fleet_run_refreshes_the_reference_data_of_each_portal_whose_queue_says_it_changed(
        emu: ThreadEmulator, tmp_path: Path, instance: dg.DagsterInstance) -> None:
    state_path, warehouse_path = tmp_path / "state.sqlite3", str(tmp_path / "wh.duckdb")
    keys = install_portals(emu, state_path, NAMES, COUNTS)
    defs = build_definitions(resources_for(emu, state_path, warehouse_path))
    chosen = {name: keys[name] for name in ("north", "south")}
    instance.add_dynamic_partitions(portals.name, list(chosen.values()))
    for key in chosen.values():
        assert defs.resolve_job_def("full_resync").execute_in_process(instance=instance, partition_key=key).success
    for number, name in enumerate(chosen):
        portal = emu.world.portal(name)
        portal.add_user(User(400 + number, f"Newcomer {name}", departments=(1,)))
        portal.crm.add_user_field("deal", "REGION", "string", label=f"Region of {name}")

    config = dg.RunConfig(ops={"drain_portals": FleetSyncConfig(portals=list(chosen.values()), workers=2)})
    result = defs.resolve_job_def("sync_portals").execute_in_process(instance=instance, run_config=config)

    assert result.success
    watermarks = {m.partition: m.metadata for m in result.asset_materializations_for_node("drain_portals")
                  if m.asset_key.path[-1] == "sync_watermark"}
    assert {key: watermarks[key]["reference_refreshed"].value for key in chosen.values()} == {
        key: True for key in chosen.values()}
    with duckdb.connect(warehouse_path, read_only=True) as con:
        for number, (name, key) in enumerate(chosen.items()):
            assert con.execute("SELECT full_name FROM analytics.users WHERE portal = ? AND user_id = ?",
                               [key, 400 + number]).fetchall() == [(f"Newcomer {name}",)]
            assert con.execute("SELECT label FROM analytics.columns WHERE portal = ? AND table_name = 'deals' "
                               "AND column_name = 'uf_crm_region'", [key]).fetchall() == [(f"Region of {name}",)]
