"""Reference data, stage history and deal product rows as Dagster assets, on a schedule per portal.

``reference_data`` replaces a portal's dimensions (users, departments, statuses and stages,
pipelines, smart-process types, currencies, user fields and list items, the column dictionary) in
two batch requests and rebuilds the analysts' schema; ``stage_history`` then appends the new stage
moves by id; ``deal_product_rows`` re-reads the product rows of deals the CDC loop wrote since its
last run (50 deals per request). Bitrix24 has events for some reference data (user fields,
smart-process types, new users; docs/reference-data.md): those are bound as offline events, and the
sync run that reserves one refreshes the dimensions itself (`connectors.sync.steps`). Stages,
departments, currencies and renamed users have none, so this schedule refreshes everything too:
about three requests per portal per run when little changed.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from connectors.bitrix24 import Bitrix24Client
from connectors.sync.reference import refresh_reference, sync_product_rows, sync_stage_history
from connectors.warehouse.reference import ensure_reference_tables
from connectors.warehouse.sql_warehouse import SqlWarehouse
from pipelines.assets import GROUP, WAREHOUSE_POOL, asset_key
from pipelines.partitions import portals
from pipelines.resources import Bitrix24Resource, WarehouseResource

REFERENCE_CRON = "*/15 * * * *"  # and once right after a portal's first full resync (the sensor asks)
RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL)


@contextmanager
def _connected(portal: str, bitrix24: Bitrix24Resource,
               warehouse: WarehouseResource) -> Iterator[tuple[Bitrix24Client, SqlWarehouse]]:
    """The portal's client (on the shared request budget) and the SQL warehouse, closed afterwards."""
    with bitrix24.state() as state, bitrix24.client(portal, state) as client:
        opened = warehouse.open()
        try:
            if not isinstance(opened, SqlWarehouse):
                raise dg.Failure(f"reference data needs a SQL warehouse, got {type(opened).__name__}")
            yield client, opened
        finally:
            opened.close()


@dg.asset(key=asset_key("reference_data"), partitions_def=portals, pool=WAREHOUSE_POOL, retry_policy=RETRY,
          group_name=GROUP, kinds={"bitrix24"})
def reference_data(context: dg.AssetExecutionContext, bitrix24: Bitrix24Resource,
                   warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Users, departments, stages, pipelines, currencies and field labels that turn CRM ids into names."""
    with _connected(context.partition_key, bitrix24, warehouse) as (client, wh):
        refresh = refresh_reference(client, wh, context.partition_key)
    return dg.MaterializeResult(metadata={
        **{f"rows_{name}": dg.MetadataValue.int(count) for name, count in refresh.rows.items()},
        "http_requests": dg.MetadataValue.int(refresh.requests),
        "analytics_relations": dg.MetadataValue.int(len(refresh.analytics)),
    })


@dg.asset(key=asset_key("stage_history"), deps=[reference_data], partitions_def=portals, pool=WAREHOUSE_POOL,
          retry_policy=RETRY, group_name=GROUP, kinds={"bitrix24"})
def stage_history(context: dg.AssetExecutionContext, bitrix24: Bitrix24Resource,
                  warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Every stage move of leads, deals and smart-process items, for funnels and time in stage."""
    portal = context.partition_key
    with _connected(portal, bitrix24, warehouse) as (client, wh):
        ensure_reference_tables(wh)
        types = tuple(int(row[0]) for row in wh.query(
            f"SELECT entity_type_id FROM {wh.relation('crm_types')} WHERE portal = %(portal)s", {"portal": portal}))
        synced = sync_stage_history(client, wh, portal, types)
    return dg.MaterializeResult(metadata={
        "rows_added": dg.MetadataValue.int(synced.rows),
        "http_requests": dg.MetadataValue.int(synced.requests),
        "last_ids": dg.MetadataValue.json({str(key): value for key, value in synced.marks.items()}),
    })


@dg.asset(key=asset_key("deal_product_rows"), deps=[asset_key("deals"), reference_data], partitions_def=portals,
          pool=WAREHOUSE_POOL, retry_policy=RETRY, group_name=GROUP, kinds={"bitrix24"})
def deal_product_rows(context: dg.AssetExecutionContext, bitrix24: Bitrix24Resource,
                      warehouse: WarehouseResource) -> dg.MaterializeResult:
    """The products and quantities on each deal, re-read for deals that changed since the last run."""
    with _connected(context.partition_key, bitrix24, warehouse) as (client, wh):
        synced = sync_product_rows(client, wh, context.partition_key)
    return dg.MaterializeResult(metadata={
        "deals_reread": dg.MetadataValue.int(synced.deals),
        "rows_stored": dg.MetadataValue.int(synced.rows),
        "http_requests": dg.MetadataValue.int(synced.requests),
    })


REFERENCE_JOB = dg.define_asset_job(
    "reference_refresh",
    selection=dg.AssetSelection.assets(reference_data, stage_history, deal_product_rows),
    description="Replace the portal's reference data, rebuild the analysts' views, append new stage history, "
                "re-read the product rows of changed deals.",
    executor_def=dg.in_process_executor,
)


@dg.schedule(job=REFERENCE_JOB, cron_schedule=REFERENCE_CRON, name="reference_refresh_schedule",
             default_status=dg.DefaultScheduleStatus.RUNNING)
def reference_refresh_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    """One run per portal; most reference data has no Bitrix24 event (docs/reference-data.md)."""
    stamp = context.scheduled_execution_time.isoformat()
    return [dg.RunRequest(run_key=f"reference_refresh:{key}:{stamp}", partition_key=key)
            for key in context.instance.get_dynamic_partitions(portals.name)]
