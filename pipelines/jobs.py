"""Jobs over the same CRM assets: the change sync, the full resync, and the error-lane drain.

They differ only in the reserve op's mode. Each runs in one process: per-step processes cost
seconds each on a small machine, and the steps hand each other files, not memory.
"""

import dagster as dg

from pipelines.assets import bitrix24_crm


def _mode(mode: str) -> dict:
    return {"ops": {"bitrix24_crm": {"ops": {"reserve_changes": {"config": {"mode": mode}}}}}}


SYNC_JOB = dg.define_asset_job(
    "sync",
    selection=dg.AssetSelection.assets(bitrix24_crm),
    description="Reserve pending offline events, re-read the changed objects, commit, acknowledge.",
    executor_def=dg.in_process_executor,
    config=_mode("changes"),
)

FULL_RESYNC_JOB = dg.define_asset_job(
    "full_resync",
    selection=dg.AssetSelection.assets(bitrix24_crm),
    description="Bind the offline events, then scan every entity and tombstone what the portal lacks.",
    executor_def=dg.in_process_executor,
    config=_mode("full_resync"),
)

ERROR_LANE_JOB = dg.define_asset_job(
    "drain_error_lane",
    selection=dg.AssetSelection.assets(bitrix24_crm),
    description="Retry the objects parked in the error lane (event.offline.get error=1).",
    executor_def=dg.in_process_executor,
    config=_mode("error_lane"),
)
