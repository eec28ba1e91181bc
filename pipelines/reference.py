"""Reference data, stage history and deal product rows as Dagster assets, refreshed on a schedule by
``refresh_reference_portals`` runs of N portals each (`pipelines.fleet`), and as part of a new portal's
bootstrap (`pipelines.bootstrap`); the single-portal ``reference_refresh`` job is for operators.

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
from contextlib import AbstractContextManager, contextmanager

import dagster as dg

from connectors.bitrix24 import Bitrix24Client
from connectors.sync.reference import (
    ProductRowsSync,
    ReferenceRefresh,
    StageHistorySync,
    refresh_reference,
    sync_product_rows,
    sync_stage_history,
)
from connectors.warehouse.reference import ensure_reference_tables
from connectors.warehouse.sql_warehouse import SqlWarehouse
from pipelines.assets import GROUP, WAREHOUSE_POOL, asset_key
from pipelines.fleet import FleetConfig, fleet_job, fleet_schedule, for_each_portal, warehouse_writes
from pipelines.partitions import portals
from pipelines.resources import Bitrix24Resource, WarehouseResource

REFERENCE_CRON = "*/15 * * * *"  # and as part of a portal's bootstrap (pipelines.bootstrap)
RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL)
REFERENCE_DATA = asset_key("reference_data")
STAGE_HISTORY = asset_key("stage_history")
DEAL_PRODUCT_ROWS = asset_key("deal_product_rows")


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


def reference_numbers(refresh: ReferenceRefresh) -> dict:
    """``reference_data`` metadata: rows stored per dimension, HTTP requests, analysts' relations rebuilt."""
    return {**{f"rows_{name}": dg.MetadataValue.int(count) for name, count in refresh.rows.items()},
            "http_requests": dg.MetadataValue.int(refresh.requests),
            "analytics_relations": dg.MetadataValue.int(len(refresh.analytics))}


def stage_history_numbers(synced: StageHistorySync) -> dict:
    """``stage_history`` metadata: rows appended, HTTP requests, the last stage-move id per entity type."""
    return {"rows_added": dg.MetadataValue.int(synced.rows),
            "http_requests": dg.MetadataValue.int(synced.requests),
            "last_ids": dg.MetadataValue.json({str(key): value for key, value in synced.marks.items()})}


def product_row_numbers(synced: ProductRowsSync) -> dict:
    """``deal_product_rows`` metadata: deals re-read, product rows stored, HTTP requests."""
    return {"deals_reread": dg.MetadataValue.int(synced.deals), "rows_stored": dg.MetadataValue.int(synced.rows),
            "http_requests": dg.MetadataValue.int(synced.requests)}


def _stage_history(client: Bitrix24Client, wh: SqlWarehouse, portal: str) -> StageHistorySync:
    ensure_reference_tables(wh)
    types = tuple(int(row[0]) for row in wh.query(
        f"SELECT entity_type_id FROM {wh.relation('crm_types')} WHERE portal = %(portal)s", {"portal": portal}))
    return sync_stage_history(client, wh, portal, types)


@dg.asset(key=REFERENCE_DATA, partitions_def=portals, pool=WAREHOUSE_POOL, retry_policy=RETRY,
          group_name=GROUP, kinds={"bitrix24"})
def reference_data(context: dg.AssetExecutionContext, bitrix24: Bitrix24Resource,
                   warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Users, departments, stages, pipelines, currencies and field labels that turn CRM ids into names."""
    with _connected(context.partition_key, bitrix24, warehouse) as (client, wh):
        refresh = refresh_reference(client, wh, context.partition_key)
    return dg.MaterializeResult(metadata=reference_numbers(refresh))


@dg.asset(key=STAGE_HISTORY, deps=[reference_data], partitions_def=portals, pool=WAREHOUSE_POOL,
          retry_policy=RETRY, group_name=GROUP, kinds={"bitrix24"})
def stage_history(context: dg.AssetExecutionContext, bitrix24: Bitrix24Resource,
                  warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Every stage move of leads, deals and smart-process items, for funnels and time in stage."""
    with _connected(context.partition_key, bitrix24, warehouse) as (client, wh):
        synced = _stage_history(client, wh, context.partition_key)
    return dg.MaterializeResult(metadata=stage_history_numbers(synced))


@dg.asset(key=DEAL_PRODUCT_ROWS, deps=[asset_key("deals"), reference_data], partitions_def=portals,
          pool=WAREHOUSE_POOL, retry_policy=RETRY, group_name=GROUP, kinds={"bitrix24"})
def deal_product_rows(context: dg.AssetExecutionContext, bitrix24: Bitrix24Resource,
                      warehouse: WarehouseResource) -> dg.MaterializeResult:
    """The products and quantities on each deal, re-read for deals that changed since the last run."""
    with _connected(context.partition_key, bitrix24, warehouse) as (client, wh):
        synced = sync_product_rows(client, wh, context.partition_key)
    return dg.MaterializeResult(metadata=product_row_numbers(synced))


REFERENCE_JOB = dg.define_asset_job(
    "reference_refresh",
    selection=dg.AssetSelection.assets(reference_data, stage_history, deal_product_rows),
    description="Replace the portal's reference data, rebuild the analysts' views, append new stage history, "
                "re-read the product rows of changed deals.",
    executor_def=dg.in_process_executor,
)


@dg.op(pool=WAREHOUSE_POOL, tags={"kind": "bitrix24"})
def refresh_reference_portal_group(context: dg.OpExecutionContext, config: FleetConfig,
                                   bitrix24: Bitrix24Resource, warehouse: WarehouseResource) -> dg.Output[dict]:
    """For every configured portal, several at a time: replace its reference data and rebuild the
    analysts' views, append new stage history, re-read the product rows of changed deals; each of the
    three materialized for the portal's partition. No drain claim: nothing here reads the queue."""
    writes = warehouse_writes(warehouse)
    return for_each_portal(context, config, lambda portal: refresh_portal(portal, bitrix24, warehouse, writes))


def refresh_portal(portal: str, bitrix24: Bitrix24Resource, warehouse: WarehouseResource,
                   writes: AbstractContextManager) -> list[dg.AssetMaterialization]:
    """Refresh one portal's reference data (and the analysts' views), stage history and product rows;
    returns their three materializations for the portal's partition. ``writes`` is what the run's
    portals take turns on (`pipelines.fleet.warehouse_writes`). API and warehouse errors propagate."""
    # DuckDB: one portal at a time (one writer per file), since each step commits as it reads.
    with writes, _connected(portal, bitrix24, warehouse) as (client, wh):
        refresh = refresh_reference(client, wh, portal)
        history = _stage_history(client, wh, portal)
        products = sync_product_rows(client, wh, portal)
    return [dg.AssetMaterialization(REFERENCE_DATA, partition=portal, metadata=reference_numbers(refresh)),
            dg.AssetMaterialization(STAGE_HISTORY, partition=portal, metadata=stage_history_numbers(history)),
            dg.AssetMaterialization(DEAL_PRODUCT_ROWS, partition=portal, metadata=product_row_numbers(products))]


refresh_reference_portals_job = fleet_job(
    "refresh_reference_portals", refresh_reference_portal_group,
    "Refresh the reference data, stage history and deal product rows of several portals in one run; each portal "
    "is its own partition.")


# There are no Bitrix24 events for most reference data (docs/reference-data.md): a schedule refreshes it.
reference_refresh_schedule = fleet_schedule(
    refresh_reference_portals_job, refresh_reference_portal_group.name, FleetConfig, REFERENCE_CRON,
    "reference_refresh_schedule",
    "Every 15 minutes: refresh the reference data, stage history and product rows of every loaded portal, "
    "N portals per run (Bitrix24Resource.maintenance_portals_per_run).")
