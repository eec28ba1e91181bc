"""Jobs: the change sync, the full resync and the error-lane drain over the same CRM assets (they
differ only in the reserve op's mode), and the reconciliation; schedules for the last two.

Each runs in one process: per-step processes cost seconds each on a small machine, and the steps
hand each other files, not memory.
"""

import os

import dagster as dg

from pipelines.assets import bitrix24_crm
from pipelines.health import ENTITY_CHECKS, dead_letters, reconciliation
from pipelines.partitions import portals

# A run whose worker died (OOM, kill -9) is stopped by run monitoring after this long at the latest;
# a retry then recovers its reservations. Far above a normal sync run (seconds).
SYNC_MAX_RUNTIME_S = os.environ.get("B24_SYNC_MAX_RUNTIME_S", "1800")
SCAN_MAX_RUNTIME_S = "21600"  # a full scan of a big portal at 2 requests/s takes hours

CRM_TABLES = dg.AssetSelection.assets(bitrix24_crm) | dg.AssetSelection.checks(*ENTITY_CHECKS)


def _crm_job(name: str, mode: str, description: str, max_runtime_s: str,
             also: dg.AssetSelection | None = None):
    """A job over the CRM tables whose reserve op runs in ``mode``; one process, no per-step spawn."""
    return dg.define_asset_job(
        name,
        selection=CRM_TABLES | also if also is not None else CRM_TABLES,
        description=description,
        executor_def=dg.in_process_executor,
        config={"ops": {"bitrix24_crm": {"ops": {"reserve_changes": {"config": {"mode": mode}}}}}},
        tags={"dagster/max_runtime": max_runtime_s},
    )


SYNC_JOB = _crm_job("sync", "changes", "Reserve pending offline events, re-read the changed objects, commit, "
                    "acknowledge.", SYNC_MAX_RUNTIME_S)
FULL_RESYNC_JOB = _crm_job("full_resync", "full_resync", "Bind the offline events, then scan every entity and "
                           "tombstone what the portal lacks.", SCAN_MAX_RUNTIME_S)
ERROR_LANE_JOB = _crm_job("drain_error_lane", "error_lane", "Retry the objects parked in the error lane "
                          "(event.offline.get error=1).", SYNC_MAX_RUNTIME_S,
                          also=dg.AssetSelection.assets(dead_letters))
RECONCILE_JOB = dg.define_asset_job(
    "reconcile",
    selection=dg.AssetSelection.assets(reconciliation),
    description="Compare every portal id and modification time with the warehouse; repair differences.",
    executor_def=dg.in_process_executor,
    tags={"dagster/max_runtime": SCAN_MAX_RUNTIME_S},
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
