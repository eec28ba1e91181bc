"""The code location: `dagster dev -w workspace.yaml` loads `defs` from here.

Configuration is Dagster resources (`pipelines.resources`): secrets and places through `dg.EnvVar`,
resolved when a run or a sensor tick starts, so the definitions load without them and never read the
environment at import. Numbers (rate limits, peek interval, snapshot cadence) are resource fields with
defaults; a deployment that needs others builds its own definitions with `build_definitions`.
"""

import warnings
from collections.abc import Sequence
from datetime import timedelta

import dagster as dg

from pipelines.assets import FRESHNESS_WINDOW, crm_assets, offline_queue
from pipelines.bootstrap import full_resync_portals_job
from pipelines.fleet import drain_error_lanes_job, sync_portals_job
from pipelines.health import dead_letters, health_checks, reconciliation
from pipelines.jobs import (
    ERROR_LANE_JOB,
    ERROR_LANE_SCHEDULE,
    FULL_RESYNC_JOB,
    HEALTH_JOB,
    HEALTH_SCHEDULE,
    RECONCILE_JOB,
    RECONCILE_SCHEDULE,
    SYNC_JOB,
    TOKEN_HYGIENE_SCHEDULE,
    reconcile_portals_job,
    token_hygiene,
)
from pipelines.reference import (
    REFERENCE_JOB,
    deal_product_rows,
    reference_data,
    reference_refresh_schedule,
    refresh_reference_portals_job,
    stage_history,
)
from pipelines.resources import Bitrix24Resource, WarehouseResource
from pipelines.sensors import offline_events_sensor

# Dagster 1.13.27 itself passes the beta `owners` parameter when it binds a sensor to its jobs
# (SensorDefinition.with_attributes), whether or not a sensor has owners; ours has none. Only that
# warning is silenced, so any beta or preview API we might start using still shows.
warnings.filterwarnings("ignore", message=r"Parameter `owners` of initializer `SensorDefinition.__init__`",
                        category=dg.BetaWarning)


def default_resources(**bitrix24_settings: object) -> dict[str, dg.ConfigurableResource]:
    """The resources as the README's environment names them (all required, resolved at launch):
    ``B24_CLIENT_ID``, ``B24_CLIENT_SECRET``, ``B24_OAUTH_TOKEN_URL``, ``B24_STATE_STORE``, ``B24_WAREHOUSE``.
    ``bitrix24_settings`` overrides `Bitrix24Resource` numbers (e.g. ``peek_interval_s=10``)."""
    return {
        "bitrix24": Bitrix24Resource(
            client_id=dg.EnvVar("B24_CLIENT_ID"),
            client_secret=dg.EnvVar("B24_CLIENT_SECRET"),
            oauth_token_url=dg.EnvVar("B24_OAUTH_TOKEN_URL"),
            state_store=dg.EnvVar("B24_STATE_STORE"),
            **bitrix24_settings,
        ),
        "warehouse": WarehouseResource(url=dg.EnvVar("B24_WAREHOUSE")),
    }


def build_definitions(resources: dict[str, dg.ConfigurableResource] | None = None, *,
                      freshness_window: timedelta = FRESHNESS_WINDOW,
                      writebacks: Sequence[dg.AssetsDefinition] = ()) -> dg.Definitions:
    """Every asset, check, job, schedule and sensor of the product, over ``resources`` (default:
    `default_resources`). A deployment with other numbers passes e.g.
    ``{"bitrix24": Bitrix24Resource(..., burst=250, drain_per_s=5), "warehouse": ...}``;
    ``freshness_window``: how long a portal may go without a sync landing before it is stale;
    ``writebacks``: declared write-backs (`pipelines.writeback.writeback_asset`)."""
    return dg.Definitions(
        assets=[offline_queue, crm_assets(freshness_window), reconciliation, dead_letters,
                reference_data, stage_history, deal_product_rows, *writebacks],
        asset_checks=health_checks(freshness_window),
        jobs=[SYNC_JOB, sync_portals_job, FULL_RESYNC_JOB, full_resync_portals_job, ERROR_LANE_JOB,
              drain_error_lanes_job, RECONCILE_JOB, reconcile_portals_job, HEALTH_JOB, token_hygiene, REFERENCE_JOB,
              refresh_reference_portals_job],
        schedules=[RECONCILE_SCHEDULE, ERROR_LANE_SCHEDULE, HEALTH_SCHEDULE, TOKEN_HYGIENE_SCHEDULE,
                   reference_refresh_schedule],
        sensors=[offline_events_sensor],
        resources=resources or default_resources(),
    )


defs = build_definitions()
