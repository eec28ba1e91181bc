"""Jobs: the change sync, the full resync and the error-lane drain over the same CRM assets (they
differ only in the reserve op's mode), the reconciliation, and the fleet's health checks; schedules
for the last three.

Each runs in one process: per-step processes cost seconds each on a small machine, and the steps
hand each other files, not memory.
"""

import dagster as dg

from connectors.state.hygiene import refresh_quiet_portals
from pipelines.assets import CRM_ASSET_KEYS, SyncConfig
from pipelines.health import dead_letters, reconciliation
from pipelines.partitions import portals
from pipelines.resources import Bitrix24Resource

# A run whose worker died (OOM, kill -9) is stopped by run monitoring after its maximum runtime at the
# latest; a retry then recovers its reservations. Sync and drain runs take the instance's
# (dagster.yaml run_monitoring.max_runtime_seconds, far above a normal sync); these carry their own.
SCAN_MAX_RUNTIME_S = 21600  # a full scan of a big portal at 2 requests/s takes hours

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
    # The fleet checks sit on the watermark and the entity assets (pipelines.health.health_checks).
    selection=dg.AssetSelection.checks_for_assets(*CRM_ASSET_KEYS),
    description="Evaluate the fleet's health checks: every portal current, no stuck reservation, "
                "every value in its column's type.",
    executor_def=dg.in_process_executor,
)


def _every_portal(job, cron: str, name: str) -> dg.ScheduleDefinition:
    @dg.schedule(job=job, cron_schedule=cron, name=name, default_status=dg.DefaultScheduleStatus.RUNNING)
    def _schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        keys = context.instance.get_dynamic_partitions(portals.name)
        stamp = context.scheduled_execution_time.isoformat()
        return [dg.RunRequest(run_key=f"{name}:{key}:{stamp}", partition_key=key) for key in keys]

    return _schedule


RECONCILE_SCHEDULE = _every_portal(RECONCILE_JOB, "17 * * * *", "hourly_reconciliation")
ERROR_LANE_SCHEDULE = _every_portal(ERROR_LANE_JOB, "*/15 * * * *", "error_lane_drain")
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
