"""The code location: `dagster dev -w workspace.yaml` loads `defs` from here.

Configuration comes from the environment (see README): secrets through `dg.EnvVar`, resolved when a
run starts, so the definitions load without them.
"""

import os

import dagster as dg

from pipelines.assets import bitrix24_crm, offline_queue
from pipelines.health import ENTITY_CHECKS, dead_letters, reconciliation
from pipelines.jobs import (
    ERROR_LANE_JOB,
    ERROR_LANE_SCHEDULE,
    FULL_RESYNC_JOB,
    RECONCILE_JOB,
    RECONCILE_SCHEDULE,
    SYNC_JOB,
)
from pipelines.resources import OAUTH_TOKEN_URL, Bitrix24Resource, WarehouseResource
from pipelines.sensors import offline_events_sensor

defs = dg.Definitions(
    assets=[bitrix24_crm, offline_queue, reconciliation, dead_letters],
    asset_checks=ENTITY_CHECKS,
    jobs=[SYNC_JOB, FULL_RESYNC_JOB, ERROR_LANE_JOB, RECONCILE_JOB],
    schedules=[RECONCILE_SCHEDULE, ERROR_LANE_SCHEDULE],
    sensors=[offline_events_sensor],
    resources={
        "bitrix24": Bitrix24Resource(
            client_id=dg.EnvVar("B24_CLIENT_ID"),
            client_secret=dg.EnvVar("B24_CLIENT_SECRET"),
            oauth_token_url=os.environ.get("B24_OAUTH_TOKEN_URL", OAUTH_TOKEN_URL),
            state_store=dg.EnvVar("B24_STATE_STORE"),
            burst=int(os.environ.get("B24_RATE_BURST", "50")),
            drain_per_s=float(os.environ.get("B24_RATE_DRAIN_PER_S", "2")),
        ),
        "warehouse": WarehouseResource(
            url=dg.EnvVar("B24_WAREHOUSE"),
            schema_name=os.environ.get("B24_WAREHOUSE_SCHEMA", "bitrix24"),
            snapshot_every_s=float(os.environ.get("B24_SNAPSHOT_EVERY_S", "0")),
        ),
    },
)
