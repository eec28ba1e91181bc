"""Jobs: the change sync, the full resync and the error-lane drain of one portal over the same CRM
assets (they differ only in the reserve op's mode), the reconciliation, the fleet's health checks and
the token hygiene; schedules for the maintenance.

The scheduled maintenance (error-lane drain, reconciliation) runs N portals per run
(`pipelines.fleet`): a run per portal per tick would queue a thousand runs at once ahead of the change
syncs. The single-portal jobs stay for an operator launching one partition by hand.

Each runs in one process: per-step processes cost seconds each on a small machine, and the steps
hand each other files, not memory.
"""

import shutil

import dagster as dg

from connectors.state.hygiene import refresh_quiet_portals
from connectors.sync.reconcile import reconcile
from pipelines.assets import CRM_ASSET_KEYS, WAREHOUSE_POOL, SyncConfig, portal_sync
from pipelines.fleet import (
    SCAN_MAX_RUNTIME_S,
    FleetConfig,
    FleetSyncConfig,
    drain_error_lane_portals,
    drain_error_lanes_job,
    fleet_job,
    fleet_schedule,
    for_each_portal,
    portals_with_parked_messages,
    warehouse_writes,
)
from pipelines.health import (
    FLEET_MAINTENANCE_CHECKS,
    RECONCILIATION,
    dead_letters,
    reconciliation,
    reconciliation_numbers,
)
from pipelines.resources import Bitrix24Resource, WarehouseResource

# A run whose worker died (OOM, kill -9) is stopped by run monitoring after its maximum runtime at the
# latest; a retry then recovers its reservations. Sync and drain runs take the instance's
# (dagster.yaml run_monitoring.max_runtime_seconds, far above a normal sync); scans carry their own
# (pipelines.fleet.SCAN_MAX_RUNTIME_S).

# The sync graph's assets without their checks: the fleet checks run in the health_checks job, so a
# sync every few seconds never leaves the tables showing checks in progress.
CRM_TABLES = dg.AssetSelection.assets(*CRM_ASSET_KEYS).without_checks()


def _crm_job(name: str, mode: str, description: str, max_runtime_s: int | None = None,
             also: dg.AssetSelection | None = None):
    """A job over the CRM tables whose reserve op runs in ``mode``; one process, no per-step spawn."""
    return dg.define_asset_job(
        name,
        selection=CRM_TABLES | also if also is not None else CRM_TABLES,
        description=description,
        executor_def=dg.in_process_executor,
        config=dg.RunConfig(ops={"bitrix24_crm": {"ops": {"reserve_changes": SyncConfig(mode=mode)}}}),
        tags={"dagster/max_runtime": str(max_runtime_s)} if max_runtime_s else None,
    )


SYNC_JOB = _crm_job("sync", "changes", "Reserve pending offline events, re-read the changed objects, commit, "
                    "acknowledge.")
FULL_RESYNC_JOB = _crm_job("full_resync", "full_resync", "Bind the offline events, then scan every entity and "
                           "tombstone what the portal lacks.", SCAN_MAX_RUNTIME_S)
ERROR_LANE_JOB = _crm_job("drain_error_lane", "error_lane", "Retry the objects parked in the error lane "
                          "(event.offline.get error=1).",
                          also=dg.AssetSelection.assets(dead_letters))
RECONCILE_JOB = dg.define_asset_job(
    "reconcile",
    selection=dg.AssetSelection.assets(reconciliation),
    description="Compare every portal id and modification time with the warehouse; repair differences.",
    executor_def=dg.in_process_executor,
    tags={"dagster/max_runtime": str(SCAN_MAX_RUNTIME_S)},
)
HEALTH_JOB = dg.define_asset_job(
    "health_checks",
    # The fleet checks sit on the watermark and the entity assets (pipelines.health.health_checks), and
    # on reconciliation and dead_letters (their per-portal checks run with those assets, not here).
    selection=dg.AssetSelection.checks_for_assets(*CRM_ASSET_KEYS)
    | dg.AssetSelection.checks(*FLEET_MAINTENANCE_CHECKS),
    description="Evaluate the fleet's health checks: every portal current, no stuck reservation, "
                "every value in its column's type, no portal drifting, no dead letters.",
    executor_def=dg.in_process_executor,
)


class FleetReconcileConfig(FleetConfig):
    repair: bool = True  # upsert missing and stale objects, tombstone the ones the portal lacks


@dg.op(pool=WAREHOUSE_POOL, tags={"kind": "bitrix24"})
def reconcile_portal_group(context: dg.OpExecutionContext, config: FleetReconcileConfig,
                           bitrix24: Bitrix24Resource, warehouse: WarehouseResource) -> dg.Output[dict]:
    """Compare every configured portal's ids and modification times with the warehouse and repair the
    drift, each under its drain claim; one ``reconciliation`` materialization per portal with the
    counts (``drift`` > 0 fails the fleet check ``every_portal_in_sync``)."""
    writes = warehouse_writes(warehouse)

    def work(portal: str) -> list[dg.AssetMaterialization]:
        # DuckDB: the whole scan under the file's one writer, since a repair commits in the middle of it.
        with writes, portal_sync(context, bitrix24, warehouse, portal=portal, release=True,
                                 release_on_error=True) as sync:
            reports = reconcile(sync, repair=config.repair)
        shutil.rmtree(sync.staging_dir, ignore_errors=True)
        return [dg.AssetMaterialization(RECONCILIATION, partition=portal,
                                        metadata=reconciliation_numbers(reports, config.repair))]

    return for_each_portal(context, config, work)


reconcile_portals_job = fleet_job(
    "reconcile_portals", reconcile_portal_group,
    "Reconcile several portals in one run (ids and modification times against the warehouse; repairs drift); "
    "each portal is its own partition.", SCAN_MAX_RUNTIME_S)


RECONCILE_SCHEDULE = fleet_schedule(
    reconcile_portals_job, reconcile_portal_group.name, FleetReconcileConfig, "17 * * * *", "hourly_reconciliation",
    "Hourly: reconcile every loaded portal, N portals per run (Bitrix24Resource.maintenance_portals_per_run).")
ERROR_LANE_SCHEDULE = fleet_schedule(
    drain_error_lanes_job, drain_error_lane_portals.name, FleetSyncConfig, "*/15 * * * *", "error_lane_drain",
    "Every 15 minutes: retry the error lanes of the loaded portals whose runs reported parked messages, N portals "
    "per run (Bitrix24Resource.maintenance_portals_per_run).", portals=portals_with_parked_messages)
HEALTH_SCHEDULE = dg.ScheduleDefinition(name="health_checks_every_5_minutes", job=HEALTH_JOB,
                                        cron_schedule="*/5 * * * *",
                                        default_status=dg.DefaultScheduleStatus.RUNNING)


@dg.op(description="Refresh the token pair of every portal quiet for three weeks, before its refresh token "
                   "expires (connectors.state.hygiene); fails, naming them, when a portal needs re-authorizing.")
def refresh_quiet_tokens(context: dg.OpExecutionContext, bitrix24: Bitrix24Resource) -> dg.Output[list[str]]:
    with bitrix24.state() as state:
        outcome = refresh_quiet_portals(state, bitrix24.oauth_app())
    if outcome.failed:
        context.log.warning(f"refresh failed, tried again tomorrow: {outcome.failed}")
    if outcome.reauthorization_required:
        raise dg.Failure("these portals' refresh tokens were rejected: an administrator must open the app again",
                         metadata={"portals": dg.MetadataValue.json(outcome.reauthorization_required)})
    return dg.Output(outcome.refreshed, metadata={"refreshed": len(outcome.refreshed),
                                                  "failed": dg.MetadataValue.json(outcome.failed)})


@dg.job(description="Keep quiet portals' refresh tokens alive (daily).", executor_def=dg.in_process_executor)
def token_hygiene():
    refresh_quiet_tokens()


TOKEN_HYGIENE_SCHEDULE = dg.ScheduleDefinition(name="daily_token_hygiene", job=token_hygiene,
                                               cron_schedule="41 3 * * *",
                                               default_status=dg.DefaultScheduleStatus.RUNNING)
