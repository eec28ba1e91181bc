"""The entity tables as one graph-backed multi-asset: reserve -> fetch -> commit -> ack.

Each op runs one step of `connectors.sync.steps` for the run's portal (its partition) and hands the
next op the path of a small manifest in the run's staging directory. The ack op is last: the
tables count as materialized only once the queue rows behind them are acknowledged.
"""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from connectors.sync import steps
from connectors.sync.portal import PortalSync
from connectors.sync.staging import (
    committed_from_json,
    fetched_from_json,
    read_json,
    run_staging_dir,
    write_json,
)
from pipelines.partitions import portals
from pipelines.resources import Bitrix24Resource, WarehouseResource
from pipelines.tables import DESCRIPTIONS, ENTITY_ASSETS, QUEUE_ASSET, asset_for_table, asset_key

# DuckDB allows one writer per file: every op that opens the warehouse takes a slot of this pool
# (dagster.yaml sets its limit), so runs of different portals queue instead of failing on the lock.
WAREHOUSE_POOL = "warehouse"
VALUE_COERCIONS = "value_coercions"  # ack metadata key read by the value_coercions check
RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


class SyncConfig(dg.Config):
    mode: str = "changes"  # changes | full_resync | error_lane
    max_events: int = 25_000  # per run; the sensor starts another run for the rest


RunContext = dg.OpExecutionContext | dg.AssetExecutionContext


def staging_dir(context: RunContext) -> Path:
    """``$DAGSTER_HOME/storage/bitrix24_staging/<portal>/<run_id>``, owner-only."""
    root = Path(context.instance.storage_directory()) / "bitrix24_staging"
    return run_staging_dir(root, context.partition_key, context.run_id)


def _related_runs(context: RunContext) -> tuple[str, ...]:
    """A run retried from failure reads manifests its parent (or the first run) staged."""
    return tuple(run_id for run_id in (context.run.parent_run_id, context.run.root_run_id) if run_id)


@contextmanager
def portal_sync(context: RunContext, bitrix24: Bitrix24Resource, warehouse: WarehouseResource,
                max_events: int = 25_000) -> Iterator[PortalSync]:
    """The run's portal, connected; its HTTP usage is added to the run's tally when the op ends."""
    portal = context.partition_key
    state = bitrix24.state()
    client = bitrix24.client(portal, state)
    wh = warehouse.open()
    sync = PortalSync(portal, client, wh, staging_dir(context), connector=bitrix24.connector,
                      max_events=max_events, keep_staging=_related_runs(context))
    try:
        yield sync
    finally:
        _add_usage(sync.staging_dir, client.usage.snapshot())
        wh.close()
        client.close()
        state.close()


def _add_usage(directory: Path, usage: dict) -> None:
    tally_file = directory / "usage.json"
    tally = read_json(tally_file) if tally_file.exists() else {"http_requests": 0, "operating_s": 0.0,
                                                                "retries": 0}
    tally["http_requests"] += usage["http_requests"]
    tally["retries"] += usage["retries"]
    tally["operating_s"] += sum(m["processing_s"] for m in usage["methods"].values())
    write_json(tally_file, tally)


@dg.op(pool=WAREHOUSE_POOL, retry_policy=RETRY)
def reserve_changes(context: dg.OpExecutionContext, config: SyncConfig, bitrix24: Bitrix24Resource,
                    warehouse: WarehouseResource) -> str:
    """Recover unfinished reservations, then reserve new queue rows (journalled before use)."""
    with portal_sync(context, bitrix24, warehouse, config.max_events) as sync:
        manifest = steps.reserve(sync, config.mode)
    reserved = read_json(manifest)
    context.log.info(f"{reserved['event_count']} queue rows in {len(reserved['process_ids'])} reservations "
                     f"({reserved['recovered']} recovered, mode {reserved['mode']})")
    if reserved["at_most_once"]:
        context.log.warning("DEGRADED: this portal's plan lacks rest_offline_extended; rows were deleted "
                            "when read (clear=1). Run reconcile to repair anything a crash lost.")
    return str(manifest)


@dg.op(retry_policy=RETRY)
def fetch_state(context: dg.OpExecutionContext, bitrix24: Bitrix24Resource, warehouse: WarehouseResource,
                reserved: str) -> str:
    """Re-read the current state of the changed objects, 2,500 per request, into staged Parquet."""
    with portal_sync(context, bitrix24, warehouse) as sync:
        return str(steps.fetch(sync, reserved))


@dg.op(pool=WAREHOUSE_POOL, retry_policy=RETRY)
def commit_rows(context: dg.OpExecutionContext, bitrix24: Bitrix24Resource, warehouse: WarehouseResource,
                fetched: str) -> str:
    """Upserts, tombstones and the journal's 'loaded' mark in one warehouse transaction."""
    with portal_sync(context, bitrix24, warehouse) as sync:
        return str(steps.commit(sync, fetched))


@dg.op(pool=WAREHOUSE_POOL, retry_policy=RETRY,
       out={name: dg.Out(dg.Nothing) for name in ENTITY_ASSETS})
def ack_events(context: dg.OpExecutionContext, bitrix24: Bitrix24Resource, warehouse: WarehouseResource,
               committed: str):
    """Acknowledge the committed queue rows, then report each table's numbers."""
    with portal_sync(context, bitrix24, warehouse) as sync:
        cleared = steps.ack(sync, committed)
    outcome = committed_from_json(read_json(committed))
    fetched = fetched_from_json(read_json(outcome.fetched_file))
    # A retried run (from failure) reuses the manifests of its parent run: both directories count.
    run_dirs = list(dict.fromkeys([staging_dir(context), Path(committed).parent]))
    usage = _total_usage(run_dirs)
    lag_s = _lag_seconds(fetched.reserved.oldest_event_at)
    per_asset: dict[str, dict[str, float | int]] = {
        name: {"rows_upserted": 0, "tombstones": 0, "events": 0, "rows_ignored_older": 0, "values_nulled": 0}
        for name in ENTITY_ASSETS}
    coercions: dict[str, dict[str, dict]] = {name: {} for name in ENTITY_ASSETS}  # asset -> table -> column
    for table, numbers in outcome.tables.items():
        totals = per_asset[asset_for_table(table)]
        totals["rows_upserted"] += numbers.rows_upserted
        totals["tombstones"] += numbers.tombstones
        totals["events"] += numbers.events
        totals["rows_ignored_older"] += numbers.rows_ignored_older
        totals["values_nulled"] += numbers.values_nulled
        if numbers.coerced:
            coercions[asset_for_table(table)][table] = numbers.coerced
    for name, totals in per_asset.items():
        context.add_output_metadata({
            **totals,
            # Values the value policy stored as NULL (kept in _raw): table -> column -> count, examples.
            VALUE_COERCIONS: dg.MetadataValue.json(coercions[name]),
            "lag_s": lag_s,
            "run_http_requests": usage["http_requests"],
            "run_operating_s": round(usage["operating_s"], 3),
            "reservations_acked": cleared,
            "parked_in_error_lane": len(fetched.failures),
            "mode": fetched.reserved.mode,
        }, output_name=name)
    # A failed run's files stay for debugging until the portal's next run has recovered from it.
    for directory in run_dirs:
        shutil.rmtree(directory, ignore_errors=True)
    return tuple(None for _ in ENTITY_ASSETS)


def _total_usage(directories: list[Path]) -> dict[str, float]:
    total = {"http_requests": 0, "operating_s": 0.0}
    for directory in directories:
        if (directory / "usage.json").exists():
            tally = read_json(directory / "usage.json")
            total["http_requests"] += tally["http_requests"]
            total["operating_s"] += tally["operating_s"]
    return total


def _lag_seconds(oldest_event_at: str | None) -> float:
    if not oldest_event_at:
        return 0.0
    return round((datetime.now(UTC) - datetime.fromisoformat(oldest_event_at)).total_seconds(), 1)


@dg.graph_multi_asset(
    outs={name: dg.AssetOut(key=asset_key(name), description=DESCRIPTIONS[name], group_name="bitrix24",
                            kinds={"bitrix24"}) for name in ENTITY_ASSETS},
    partitions_def=portals,
)
def bitrix24_crm():
    """CRM tables kept current from the portal's offline-event queue."""
    outputs = ack_events(commit_rows(fetch_state(reserve_changes())))
    return dict(zip(ENTITY_ASSETS, outputs, strict=True))


offline_queue = dg.AssetSpec(
    QUEUE_ASSET,
    description="The portal's offline-event queue: changed objects waiting to be synced.",
    partitions_def=portals,
    group_name="bitrix24",
)
