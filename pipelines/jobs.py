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

# A run whose worker died (OOM, kill -9) is stopped by run monitoring after this long; the sensor's
# next run then recovers its reservations. Far above a normal sync run (seconds).
MAX_RUNTIME_TAG = {"dagster/max_runtime": os.environ.get("B24_SYNC_MAX_RUNTIME_S", "1800")}


def _mode(mode: str) -> dict:
    return {"ops": {"bitrix24_crm": {"ops": {"reserve_changes": {"config": {"mode": mode}}}}}}


CRM_TABLES = dg.AssetSelection.assets(bitrix24_crm) | dg.AssetSelection.checks(*ENTITY_CHECKS)

SYNC_JOB = dg.define_asset_job(
    "sync",
    selection=CRM_TABLES,
    description="Reserve pending offline events, re-read the changed objects, commit, acknowledge.",
    executor_def=dg.in_process_executor,
    config=_mode("changes"),
    tags=MAX_RUNTIME_TAG,
)

FULL_RESYNC_JOB = dg.define_asset_job(
    "full_resync",
    selection=CRM_TABLES,
    description="Bind the offline events, then scan every entity and tombstone what the portal lacks.",
    executor_def=dg.in_process_executor,
    config=_mode("full_resync"),
    tags={"dagster/max_runtime": "21600"},
)

ERROR_LANE_JOB = dg.define_asset_job(
    "drain_error_lane",
    selection=CRM_TABLES | dg.AssetSelection.assets(dead_letters),
    description="Retry the objects parked in the error lane (event.offline.get error=1).",
    executor_def=dg.in_process_executor,
    config=_mode("error_lane"),
    tags=MAX_RUNTIME_TAG,
)

RECONCILE_JOB = dg.define_asset_job(
    "reconcile",
    selection=dg.AssetSelection.assets(reconciliation),
    description="Compare every portal id and modification time with the warehouse; repair differences.",
    executor_def=dg.in_process_executor,
    tags={"dagster/max_runtime": "21600"},
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
