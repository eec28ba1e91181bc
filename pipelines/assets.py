"""The asset graph: the portal's offline-event queue feeds the CRM tables, kept current by one graph of
reserve -> fetch -> commit -> ack per portal (a partition).

* ``bitrix24/offline_queue``: the queue itself, observed (not materialized) by the sensor: depth and
  age of the oldest row over the portals it looked at;
* one asset per entity kind (``connectors.bitrix24.entity_assets``: the registry names them), each a
  graph output that is materialized only when a sync changed its table for that portal, so a sync that
  touched deals does not show contacts as materializing;
* ``bitrix24/sync_watermark``: materialized for a portal by every sync once its queue rows are
  acknowledged (and by the sensor when it finds the portal's queue empty): the point up to which the
  portal's changes are in the warehouse. Its freshness policy turns red when none landed in the window.

Each op runs one step of `connectors.sync.steps` and hands the next op the path of a small manifest
in the run's staging directory. The ack op is last: nothing counts as materialized before the queue
rows behind it are acknowledged.
"""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from connectors.bitrix24 import entity_assets, kind_from_key
from connectors.state import StateStore
from connectors.sync import steps
from connectors.sync.portal import PortalSync
from connectors.sync.staging import (
    Committed,
    Fetched,
    Reserved,
    read_json,
    run_staging_dir,
    write_json,
)
from pipelines.partitions import portals
from pipelines.resources import Bitrix24Resource, WarehouseResource

# asset name -> description, one entry per entity kind of the registry (connectors.bitrix24.entities)
ENTITY_ASSETS: dict[str, str] = entity_assets()
GROUP = "bitrix24"


def asset_key(name: str) -> dg.AssetKey:
    """``bitrix24/<name>``: every asset of this product lives under the ``bitrix24`` prefix and group."""
    return dg.AssetKey([GROUP, name])


OFFLINE_QUEUE = asset_key("offline_queue")
SYNC_WATERMARK = asset_key("sync_watermark")
# A portal whose changes have not landed for this long is stale: the promise is "fresh within a
# minute", the sensor confirms quiet portals every few minutes, so ten minutes is an incident.
FRESHNESS_WINDOW = timedelta(minutes=10)

# DuckDB allows one writer per file: every op that opens the warehouse takes a slot of this pool
# (dagster.yaml sets its limit), so runs of different portals queue instead of failing on the lock.
WAREHOUSE_POOL = "warehouse"
VALUE_COERCIONS = "value_coercions"  # entity metadata key read by the value_coercions check
RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


class SyncConfig(dg.Config):
    """The reserve op's settings; the jobs set ``mode`` (`connectors.sync.steps.MODES`)."""

    mode: str = "changes"
    # Queue rows per run; the sensor starts another run for the rest. The step-by-step job reserves at
    # most connectors.sync.steps.ROUND_EVENTS (25,000) of them, bounding its memory.
    max_events: int = 25_000


RunContext = dg.OpExecutionContext | dg.AssetExecutionContext


def staging_dir(context: RunContext, portal: str | None = None) -> Path:
    """``$DAGSTER_HOME/storage/bitrix24_staging/<portal>/<run_id>``, owner-only."""
    root = Path(context.instance.storage_directory()) / "bitrix24_staging"
    return run_staging_dir(root, portal or context.partition_key, context.run_id)


def _related_runs(context: RunContext) -> tuple[str, ...]:
    """A run retried from failure reads manifests its parent (or the first run) staged."""
    return tuple(run_id for run_id in (context.run.parent_run_id, context.run.root_run_id) if run_id)


ACTIVE_RUN_STATUSES = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
                       dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)


def run_is_alive(instance: dg.DagsterInstance, run_id: str) -> bool:
    """Whether a run may still be working (queued, starting, started or cancelling)."""
    record = instance.get_run_record_by_id(run_id)
    return record is not None and record.dagster_run.status in ACTIVE_RUN_STATUSES


def claim_portal(context: RunContext, state: StateStore, portal: str) -> bool:
    """This run's claim on draining ``portal`` (`StateStore.claim_drain`): taken over from a run that
    died or failed (a retry from failure continues its parent's drain); refused while another live run
    holds it."""
    return state.claim_drain(portal, context.run_id, lambda owner: run_is_alive(context.instance, owner))


@contextmanager
def portal_sync(context: RunContext, bitrix24: Bitrix24Resource, warehouse: WarehouseResource,
                max_events: int = 25_000, portal: str | None = None, *, release: bool = False,
                release_on_error: bool = False) -> Iterator[PortalSync]:
    """The portal (default: the run's partition), connected, while this run holds its drain claim;
    its HTTP usage is added to the run's tally when the op ends.

    ``release``: this block is the drain's last step in this run, so the claim is released when the
    block exits cleanly; ``release_on_error``: released when it raises too (a multi-portal run, where
    nothing in the run continues a failed portal: the next run that claims it recovers its
    reservations). Otherwise the claim stays with this run, so a retry from failure (same run or
    child run) continues the drain, and another run takes it over only once this one has ended.

    Raises `dg.RetryRequested` while another run drains the portal: one drain per portal at a time,
    across runs of every job (DESIGN §3)."""
    portal = portal or context.partition_key
    state = bitrix24.state()
    try:
        if not claim_portal(context, state, portal):
            raise dg.RetryRequested(max_retries=10, seconds_to_wait=15)
        client = bitrix24.client(portal, state)
        wh = warehouse.open()
        # The state store also caches the portal's look-ups (types, fields, plan) between runs.
        sync = PortalSync(portal, client, wh, staging_dir(context, portal), connector=bitrix24.connector,
                          max_events=max_events, keep_staging=_related_runs(context), state=state)
        clean = False
        try:
            yield sync
            clean = True
        finally:
            _add_usage(sync.staging_dir, client.usage.snapshot())
            wh.close()
            client.close()
            # On the same state-store connection: releasing costs no second one.
            if (release and clean) or (release_on_error and not clean):
                state.release_drain(portal, context.run_id)
    finally:
        state.close()


def _add_usage(directory: Path, usage: dict) -> None:
    tally_file = directory / "usage.json"
    tally = read_json(tally_file) if tally_file.exists() else {"http_requests": 0, "operating_s": 0.0,
                                                                "retries": 0}
    tally["http_requests"] += usage["http_requests"]
    tally["retries"] += usage["retries"]
    tally["operating_s"] += sum(m["processing_s"] for m in usage["methods"].values())
    write_json(tally_file, tally)


@dg.op(pool=WAREHOUSE_POOL, retry_policy=RETRY, ins={"queue": dg.In(dg.Nothing)})
def reserve_changes(context: dg.OpExecutionContext, config: SyncConfig, bitrix24: Bitrix24Resource,
                    warehouse: WarehouseResource) -> str:
    """Recover unfinished reservations, then reserve new queue rows (journalled before use)."""
    with portal_sync(context, bitrix24, warehouse, config.max_events) as sync:
        manifest = steps.reserve(sync, config.mode)
    reserved = Reserved.read(manifest)
    context.log.info(f"{reserved.event_count} queue rows in {len(reserved.process_ids)} reservations "
                     f"({reserved.recovered} recovered, mode {reserved.mode})")
    if reserved.at_most_once:
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
       out={SYNC_WATERMARK.path[-1]: dg.Out(dg.Nothing),
            **{name: dg.Out(dg.Nothing, is_required=False) for name in ENTITY_ASSETS}})
def ack_events(context: dg.OpExecutionContext, bitrix24: Bitrix24Resource, warehouse: WarehouseResource,
               committed: str) -> Iterator[dg.Output]:
    """Acknowledge the committed queue rows, then materialize the watermark and every changed table.

    Each table's numbers are worked out before anything is acknowledged: a table no asset covers
    fails the run while its rows still wait in the queue (nothing acknowledged is unreported).
    """
    report = SyncReport.of(committed)  # before the ack: an asset missing from the graph fails here
    with portal_sync(context, bitrix24, warehouse, release=True) as sync:
        cleared = steps.ack(sync, committed)
    # A retried run (from failure) reuses the manifests of its parent run: both directories count.
    run_dirs = list(dict.fromkeys([staging_dir(context), Path(committed).parent]))
    usage = _total_usage(run_dirs)
    yield dg.Output(None, SYNC_WATERMARK.path[-1], metadata={
        **report.watermark(cleared), "run_http_requests": usage["http_requests"],
        "run_operating_s": round(usage["operating_s"], 3)})
    for name, metadata in report.tables().items():
        yield dg.Output(None, name, metadata=metadata)
    # A failed run's files stay for debugging until the portal's next run has recovered from it.
    for directory in run_dirs:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class SyncReport:
    """What one portal's sync tells operators: the watermark's metadata and, for every entity asset
    whose table changed (every one in a full resync), its numbers. Read from the run's manifests."""

    fetched: Fetched
    per_asset: dict[str, dict]

    @classmethod
    def of(cls, committed: str | Path) -> "SyncReport":
        """Raises KeyError when a staged kind names an asset the graph lacks (see `numbers_per_asset`)."""
        outcome = Committed.read(committed)
        fetched = Fetched.read(outcome.fetched_file)
        return cls(fetched, numbers_per_asset(outcome, fetched))

    @property
    def mode(self) -> str:
        return self.fetched.reserved.mode

    def watermark(self, reservations_acked: int) -> dict:
        """``sync_watermark`` metadata: lag (seconds from the oldest change to now), counts, tables changed."""
        return {
            "confirmed_by": "sync",
            "mode": self.mode,
            "lag_s": lag_seconds(self.fetched.reserved.oldest_event_at),
            "events": self.fetched.reserved.event_count,
            "reservations_acked": reservations_acked,
            "parked_in_error_lane": len(self.fetched.failures),
            "tables_changed": dg.MetadataValue.json(sorted(self.tables())),
            # The plan lacks rest_offline_extended (WRONG_LICENSE on clear=0): rows were deleted when
            # read, so a crash in between loses changes until reconcile repairs them (facts §2.2, §2.7).
            "delivery": "DEGRADED: at most once (clear=1)" if self.fetched.reserved.at_most_once
                        else "at least once (clear=0, acknowledged after commit)",
            "values_nulled": sum(int(numbers["values_nulled"]) for numbers in self.per_asset.values()),
            # Rows saying user fields, smart-process types or users changed; with a refresh, the run
            # replaced the portal's reference data and rebuilt the analysts' views before acknowledging.
            "reference_events": self.fetched.reference_events,
            "reference_refreshed": bool(self.fetched.reference),
        }

    def tables(self) -> dict[str, dict]:
        """``{asset name: metadata}`` of the entity assets to materialize: rows upserted, tombstones,
        events, rows ignored as older, values nulled and which (table -> column -> count, examples)."""
        return {name: {**{key: value for key, value in numbers.items() if key != VALUE_COERCIONS},
                       # Values the value policy stored as NULL (kept in _raw).
                       VALUE_COERCIONS: dg.MetadataValue.json(numbers[VALUE_COERCIONS]),
                       "mode": self.mode}
                for name, numbers in self.per_asset.items()
                if numbers["rows_upserted"] or numbers["tombstones"] or self.mode == "full_resync"}


def numbers_per_asset(outcome: Committed, fetched: Fetched) -> dict[str, dict]:
    """``{asset: {rows_upserted, tombstones, events, rows_ignored_older, values_nulled,
    value_coercions: {table: {column: {count, examples}}}}}`` summed over the asset's tables.

    Raises KeyError when a staged kind names an asset this graph does not have (a registry entry
    without its asset): the run fails before its queue rows are acknowledged."""
    per_asset: dict[str, dict] = {}
    for part in fetched.tables:
        name = kind_from_key(part.kind).asset
        if name not in ENTITY_ASSETS:
            raise KeyError(f"entity kind {part.kind!r} names asset {name!r}, which the graph lacks")
        numbers = outcome.tables.get(part.table)
        if numbers is None:
            continue
        totals = per_asset.setdefault(name, {"rows_upserted": 0, "tombstones": 0, "events": 0,
                                             "rows_ignored_older": 0, "values_nulled": 0, VALUE_COERCIONS: {}})
        totals["rows_upserted"] += numbers.rows_upserted
        totals["tombstones"] += numbers.tombstones
        totals["events"] += numbers.events
        totals["rows_ignored_older"] += numbers.rows_ignored_older
        totals["values_nulled"] += numbers.values_nulled
        if numbers.coerced:
            totals[VALUE_COERCIONS][part.table] = numbers.coerced
    return per_asset


def lag_seconds(oldest_event_at: str | None) -> float:
    """Seconds from ``oldest_event_at`` (ISO, the oldest change's TIMESTAMP_X) to now; 0 without one."""
    if not oldest_event_at:
        return 0.0
    return round((datetime.now(UTC) - datetime.fromisoformat(oldest_event_at)).total_seconds(), 1)


def _total_usage(directories: list[Path]) -> dict[str, float]:
    total = {"http_requests": 0, "operating_s": 0.0}
    for directory in directories:
        if (directory / "usage.json").exists():
            tally = read_json(directory / "usage.json")
            total["http_requests"] += tally["http_requests"]
            total["operating_s"] += tally["operating_s"]
    return total


offline_queue = dg.AssetSpec(
    OFFLINE_QUEUE,
    description="The portals' offline-event queues (changed objects waiting to be synced): observed by the "
                "sensor, never materialized; each observation gives the depth and the oldest row's age.",
    group_name=GROUP,
    kinds={"bitrix24"},
)


CRM_ASSET_KEYS = [SYNC_WATERMARK, *(asset_key(name) for name in ENTITY_ASSETS)]


def crm_assets(freshness_window: timedelta = FRESHNESS_WINDOW) -> dg.AssetsDefinition:
    """The sync graph's assets: the watermark (red, by Dagster's freshness policy, when no sync landed
    within ``freshness_window``; a warning at half of it) and one asset per entity kind."""

    @dg.graph_multi_asset(
        name="bitrix24_crm",
        ins={"queue": dg.AssetIn(OFFLINE_QUEUE, dagster_type=dg.Nothing)},
        outs={
            SYNC_WATERMARK.path[-1]: dg.AssetOut(
                key=SYNC_WATERMARK, group_name=GROUP, kinds={"bitrix24"}, is_required=True,
                description="How far each portal's changes are in the warehouse: materialized by every sync "
                            "once its queue rows are acknowledged, and by the sensor when the queue is empty."),
            **{name: dg.AssetOut(key=asset_key(name), description=description, group_name=GROUP,
                                 kinds={"bitrix24"}, is_required=False)
               for name, description in ENTITY_ASSETS.items()},
        },
        partitions_def=portals,
    )
    def bitrix24_crm(queue):
        """CRM tables kept current from the portal's offline-event queue."""
        return ack_events(commit_rows(fetch_state(reserve_changes(queue))))._asdict()

    # Set on the specs: an AssetOut's group_name and freshness_policy do not reach a graph-backed
    # asset's specs in Dagster 1.13 (the UI then shows group "default", the daemon NOT_APPLICABLE).
    policy = dg.FreshnessPolicy.time_window(fail_window=freshness_window, warn_window=freshness_window / 2)

    def finish(spec: dg.AssetSpec) -> dg.AssetSpec:
        spec = spec.replace_attributes(group_name=GROUP)
        return dg.apply_freshness_policy(spec, policy) if spec.key == SYNC_WATERMARK else spec

    [finished] = dg.map_asset_specs(finish, [bitrix24_crm])
    return finished


bitrix24_crm = crm_assets()
