"""Runs that serve many portals: one run works through up to N portals at once, and each portal
still shows as its own partition.

A run per portal does not scale: a run costs seconds of process start and dozens of event-log rows,
and 1,000 portals changing once a minute would be 17 runs a second; a schedule firing a run per
portal queues 1,000 runs at once ahead of the change syncs. Here a run names its portals in its
config; inside it, each portal's work runs in a worker thread (`for_each_portal`) and logs, per
portal, the same materializations a single-portal run does. A portal that fails fails only its
part: the run goes on with the others, names the failed ones in its output and in the run tag
``bitrix24/failed_portals``, and the portal is started again on its own by the next sensor tick or
schedule.

Jobs here drain the offline-event queue (`connectors.sync.steps`: reserve -> fetch -> commit ->
ack) under each portal's drain claim (at most one drain per portal at any time, across runs of
every job), in one of three modes:

* ``sync_portals`` (mode ``changes``): what the sensor starts for portals with pending rows;
* ``drain_error_lanes`` (mode ``error_lane``): the error-lane retry, every 15 minutes, also
  reporting each portal's ``dead_letters``;
* ``full_resync_portals`` (mode ``full_resync``): bind the events and scan everything, e.g. the
  bootstrap of many new portals.

`fleet_schedule` turns a cron into ceil(P / N) runs of such a job over the portals worth the work.
"""

import math
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from connectors.sync import steps
from connectors.sync.staging import SyncMode
from pipelines.assets import SYNC_WATERMARK, WAREHOUSE_POOL, SyncReport, asset_key, portal_sync
from pipelines.health import DEAD_LETTERS, dead_letter_numbers
from pipelines.resources import Bitrix24Resource, WarehouseResource

PORTALS_TAG = "bitrix24/portals"  # comma-separated portal keys of a queue-draining run (the sensor: busy)
MAINTAINED_TAG = "bitrix24/maintained_portals"  # the same for a scheduled maintenance run
FAILED_TAG = "bitrix24/failed_portals"  # added at run time: the portals whose part failed
# Below the sensor's sync runs (10) and the bootstrap's full resyncs (0) in the run queue: maintenance
# may wait a few minutes, a change sync or a new portal's first load should not.
MAINTENANCE_PRIORITY = "-1"
SCAN_MAX_RUNTIME_S = 21600  # a full scan of a big portal at 2 requests/s takes hours

PortalWork = Callable[[str], list[dg.AssetMaterialization]]


class FleetConfig(dg.Config):
    """Which portals this run works on, and how many at once."""

    portals: list[str]
    workers: int = 4  # portals worked on concurrently (threads: the work waits on HTTP most of the time)


class FleetSyncConfig(FleetConfig):
    """A queue drain over several portals."""

    # Queue rows per portal per run, worked through in rounds of connectors.sync.steps.ROUND_EVENTS
    # (memory stays bounded); the sensor starts another run for the rest.
    max_events: int = 25_000


@dataclass
class PortalOutcome:
    portal: str
    events: list[dg.AssetMaterialization] = field(default_factory=list)
    error: str | None = None
    skipped: bool = False  # another run drains it now


def for_each_portal(context: dg.OpExecutionContext, config: FleetConfig, work: PortalWork) -> dg.Output[dict]:
    """Run ``work(portal)`` for every configured portal, ``config.workers`` at a time, and log the
    materializations each returns (their ``partition`` names the portal).

    A portal whose work raises `dg.RetryRequested` (another run holds its drain claim) is skipped;
    any other exception fails only that portal: logged as an error and listed in the output's
    ``failed`` metadata and the run tag ``bitrix24/failed_portals``. Returns
    ``{"failed": [portal keys]}``; never raises for a portal's sake."""
    with ThreadPoolExecutor(max_workers=max(1, config.workers), thread_name_prefix="portal") as pool:
        outcomes = list(pool.map(lambda portal: _attempt(portal, work), dict.fromkeys(config.portals)))
    for outcome in outcomes:
        for event in outcome.events:
            context.log_event(event)
        if outcome.error:
            context.log.error(f"portal {outcome.portal}: its part failed and will be retried on its own: "
                              f"{outcome.error}")
        elif outcome.skipped:
            context.log.info(f"portal {outcome.portal}: another run drains it now; left to that run")
    failed = sorted(outcome.portal for outcome in outcomes if outcome.error)
    if failed:
        context.instance.add_run_tags(context.run_id, {FAILED_TAG: ",".join(failed)})
    return dg.Output({"failed": failed}, metadata={
        "portals": len(outcomes),
        "done": sum(1 for outcome in outcomes if not outcome.error and not outcome.skipped),
        "skipped": sum(1 for outcome in outcomes if outcome.skipped),
        "failed": dg.MetadataValue.json(failed),
    })


def _attempt(portal: str, work: PortalWork) -> PortalOutcome:
    outcome = PortalOutcome(portal)
    try:
        outcome.events = work(portal)
    except dg.RetryRequested:
        outcome.skipped = True
    except Exception as error:  # one portal's failure must not stop the others
        outcome.error = f"{type(error).__name__}: {error}"
    return outcome


def warehouse_writes(warehouse: WarehouseResource) -> AbstractContextManager:
    """What the portals of one run take turns on before writing: a lock for a DuckDB file (one
    writer per file: two connections creating or altering a table at once fail with a catalog
    write-write conflict), nothing for PostgreSQL (each portal writes its own rows, and the warehouse
    serializes DDL with an advisory lock).

    For DuckDB the file is opened once here first: opening creates the journal tables if missing,
    and the portals' threads opening a fresh file at once would race on that creation."""
    if warehouse.url.startswith(("postgresql://", "postgres://")):
        return nullcontext()
    warehouse.open().close()
    return threading.Lock()


def drain(context: dg.OpExecutionContext, config: FleetSyncConfig, bitrix24: Bitrix24Resource,
          warehouse: WarehouseResource, mode: str, writes: AbstractContextManager, portal: str,
          also: Callable[..., list[dg.AssetMaterialization]] | None = None) -> list[dg.AssetMaterialization]:
    """One portal's queue drained in ``mode`` (`connectors.sync.steps.MODES`) under its drain claim,
    released when done; returns the materializations a single-portal run's ack op logs (the
    watermark, and each entity asset whose table changed), plus ``also(sync)``'s.

    Raises `dg.RetryRequested` while another run drains the portal; API and warehouse errors propagate."""
    with portal_sync(context, bitrix24, warehouse, config.max_events, portal=portal, release=True,
                     release_on_error=True) as sync:
        # Reserve and ack write the journal, commit the rows; fetch only reads (the long part of a scan).
        # A backlog above steps.ROUND_EVENTS is worked through in rounds, each reported as it lands.
        events = [event for done in steps.run_rounds(sync, mode, writes)
                  for event in _materializations(portal, done.committed, done.cleared)]
        events += also(sync) if also is not None else []
    # Only after portal_sync closed (it writes the run's HTTP tally there). A failed portal's files
    # stay for debugging until its next run has recovered its reservations and sweeps them.
    shutil.rmtree(sync.staging_dir, ignore_errors=True)
    return events


def _materializations(portal: str, committed: Path, cleared: int) -> list[dg.AssetMaterialization]:
    """What a single-portal sync's ack op reports, as events for this portal's partition."""
    report = SyncReport.of(committed)
    return [dg.AssetMaterialization(SYNC_WATERMARK, partition=portal, metadata=report.watermark(cleared)),
            *(dg.AssetMaterialization(asset_key(name), partition=portal, metadata=metadata)
              for name, metadata in report.tables().items())]


@dg.op(pool=WAREHOUSE_POOL, tags={"kind": "bitrix24"})
def drain_portals(context: dg.OpExecutionContext, config: FleetSyncConfig, bitrix24: Bitrix24Resource,
                  warehouse: WarehouseResource) -> dg.Output[dict]:
    """Drain every configured portal's queue (changes mode), several at a time; one materialization of
    ``sync_watermark`` per portal drained, and of each entity asset whose table changed."""
    writes = warehouse_writes(warehouse)
    return for_each_portal(context, config, lambda portal: drain(
        context, config, bitrix24, warehouse, SyncMode.CHANGES, writes, portal))


@dg.op(pool=WAREHOUSE_POOL, tags={"kind": "bitrix24"})
def drain_error_lane_portals(context: dg.OpExecutionContext, config: FleetSyncConfig,
                             bitrix24: Bitrix24Resource, warehouse: WarehouseResource) -> dg.Output[dict]:
    """Retry every configured portal's error lane (``event.offline.get error=1``), then report what
    still waits there as the portal's ``dead_letters``."""
    writes = warehouse_writes(warehouse)

    def dead_letters(sync) -> list[dg.AssetMaterialization]:
        numbers = dead_letter_numbers(sync.queue.peek(error_lane=True), sync.warehouse.error_lane(sync.portal))
        return [dg.AssetMaterialization(DEAD_LETTERS, partition=sync.portal, metadata=numbers)]

    return for_each_portal(context, config, lambda portal: drain(
        context, config, bitrix24, warehouse, SyncMode.ERROR_LANE, writes, portal, also=dead_letters))


def fleet_job(name: str, op: dg.OpDefinition, description: str, max_runtime_s: int | None = None) -> dg.JobDefinition:
    """A multi-portal job of the one ``op`` (its config: a `FleetConfig`), in one process like every
    job here; ``max_runtime_s`` for the scans, which outlast the instance's run limit."""
    return dg.GraphDefinition(name=name, node_defs=[op], description=description).to_job(
        executor_def=dg.in_process_executor,
        tags={"dagster/max_runtime": str(max_runtime_s)} if max_runtime_s else None)


sync_portals_job = fleet_job(
    "sync_portals", drain_portals,
    "Drain the offline-event queues of several portals in one run (the sensor groups them); each portal is "
    "reported as its own partition.")
drain_error_lanes_job = fleet_job(
    "drain_error_lanes", drain_error_lane_portals,
    "Retry the objects parked in the error lanes of several portals (event.offline.get error=1) and report each "
    "portal's dead letters; each portal is its own partition.")


def maintained_portals(instance: dg.DagsterInstance, bitrix24: Bitrix24Resource) -> list[str]:
    """The portals scheduled maintenance is worth running for: installed (not uninstalled), and
    loaded at least once (``sync_watermark`` materialized for the partition: a full resync or a sync
    landed). A portal before its first full resync has nothing to reconcile or repair yet, and its
    resync does the rest."""
    with bitrix24.state() as state:
        installed = {portal.key for portal in state.portals()}
    return sorted(installed & instance.get_materialized_partitions(SYNC_WATERMARK))


def portals_with_parked_messages(instance: dg.DagsterInstance, bitrix24: Bitrix24Resource) -> list[str]:
    """The `maintained_portals` whose error lane may hold messages: their latest run reported some
    parked (`connectors.sync.steps` reports after every acknowledgement), or none has reported yet.
    Retrying every portal's empty lane every 15 minutes cost a thousand portals' fleet 40 runs a tick
    (benchmarks/scale.py); the hourly reconciliation still covers every portal."""
    with bitrix24.state() as state:
        progress = state.progress()
    return [key for key in maintained_portals(instance, bitrix24)
            if key not in progress or progress[key].parked is None or progress[key].parked > 0]


def fleet_schedule(job: dg.JobDefinition, op_name: str, config_type: type[FleetConfig], cron: str, name: str,
                   description: str,
                   portals: Callable[[dg.DagsterInstance, Bitrix24Resource], list[str]] | None = None,
                   ) -> dg.ScheduleDefinition:
    """A schedule asking, per tick, for ceil(P / N) runs of ``job`` over P portals (``portals``, by
    default the `maintained_portals`), N = ``Bitrix24Resource.maintenance_portals_per_run``, each below
    the change syncs in the run queue."""
    choose = portals or maintained_portals

    @dg.schedule(job=job, cron_schedule=cron, name=name, description=description,
                 default_status=dg.DefaultScheduleStatus.RUNNING)
    def _schedule(context: dg.ScheduleEvaluationContext, bitrix24: Bitrix24Resource) -> Iterator[dg.RunRequest]:
        keys = choose(context.instance, bitrix24)
        per_run = max(1, bitrix24.maintenance_portals_per_run)
        stamp = context.scheduled_execution_time.isoformat()
        for number in range(math.ceil(len(keys) / per_run)):
            group = keys[number * per_run:(number + 1) * per_run]
            yield dg.RunRequest(
                run_key=f"{name}:{stamp}:{number}",
                run_config=dg.RunConfig(ops={op_name: config_type(portals=group)}),
                tags={MAINTAINED_TAG: ",".join(group), "dagster/priority": MAINTENANCE_PRIORITY})

    return _schedule

