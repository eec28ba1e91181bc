"""Runs that serve many portals: one ``sync_portals`` run drains the queues of up to
``Bitrix24Resource.portals_per_run`` portals at once, and each portal still shows as its own partition.

A run per change per portal does not scale: a run costs seconds of process start and dozens of
event-log rows, and 1,000 portals changing once a minute would be 17 runs a second. Here the sensor
groups pending portals into runs; inside a run, each portal's CDC loop (`connectors.sync.steps`:
reserve -> fetch -> commit -> ack) runs in a worker thread under the portal's drain claim (at most one
drain per portal at any time, across runs of every job), and the run logs, per portal, the same
materializations a single-portal sync does: ``sync_watermark`` always, an entity asset when its table
changed. A portal that fails fails only its part: its claim is released, its rows stay queued, and the
sensor's next tick starts it again on its own; the others are not held back.
"""


import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from connectors.sync import steps
from pipelines.assets import SYNC_WATERMARK, WAREHOUSE_POOL, SyncReport, asset_key, portal_sync
from pipelines.resources import Bitrix24Resource, WarehouseResource

PORTALS_TAG = "bitrix24/portals"  # comma-separated portal keys of a sync_portals run


class FleetSyncConfig(dg.Config):
    """Which portals this run drains, and how many at once."""

    portals: list[str]
    max_events: int = 25_000  # per portal; the sensor starts another run for the rest
    workers: int = 4  # portals worked on concurrently (threads: the work waits on HTTP most of the time)


@dataclass
class PortalOutcome:
    portal: str
    events: list[dg.AssetMaterialization] = field(default_factory=list)
    error: str | None = None
    skipped: bool = False  # another run drains it now


@dg.op(pool=WAREHOUSE_POOL, tags={"kind": "bitrix24"})
def drain_portals(context: dg.OpExecutionContext, config: FleetSyncConfig, bitrix24: Bitrix24Resource,
                 warehouse: WarehouseResource) -> dg.Output[dict]:
    """Drain every configured portal's queue (changes mode), several at a time; one materialization of
    ``sync_watermark`` per portal drained, and of each entity asset whose table changed."""
    # A DuckDB file takes one writer: within this process the portals' transactions take turns.
    commits = threading.Lock()
    with ThreadPoolExecutor(max_workers=max(1, config.workers), thread_name_prefix="portal") as pool:
        outcomes = list(pool.map(lambda portal: _drain(context, config, bitrix24, warehouse, portal, commits),
                                 dict.fromkeys(config.portals)))
    for outcome in outcomes:
        for event in outcome.events:
            context.log_event(event)
        if outcome.error:
            context.log.error(f"portal {outcome.portal}: its part failed and will be retried on its own: "
                              f"{outcome.error}")
        elif outcome.skipped:
            context.log.info(f"portal {outcome.portal}: another run drains it now; left to that run")
    failed = sorted(outcome.portal for outcome in outcomes if outcome.error)
    return dg.Output({"failed": failed}, metadata={
        "portals": len(outcomes),
        "drained": sum(1 for outcome in outcomes if not outcome.error and not outcome.skipped),
        "skipped": sum(1 for outcome in outcomes if outcome.skipped),
        "failed": dg.MetadataValue.json(failed),
    })


def _drain(context: dg.OpExecutionContext, config: FleetSyncConfig, bitrix24: Bitrix24Resource,
           warehouse: WarehouseResource, portal: str, commits: threading.Lock) -> PortalOutcome:
    outcome = PortalOutcome(portal)
    try:
        with portal_sync(context, bitrix24, warehouse, config.max_events, portal=portal) as sync:
            try:
                reserved = steps.reserve(sync, "changes")
                fetched_path = steps.fetch(sync, reserved)
                with commits:
                    committed = steps.commit(sync, fetched_path)
                cleared = steps.ack(sync, committed)
                outcome.events = _materializations(portal, committed, cleared)
            finally:
                with bitrix24.state() as state:
                    state.release_drain(portal, context.run_id)
        # Only after portal_sync closed (it writes the run's HTTP tally there). A failed portal's files
        # stay for debugging until its next run has recovered its reservations and sweeps them.
        shutil.rmtree(sync.staging_dir, ignore_errors=True)
    except dg.RetryRequested:
        outcome.skipped = True
    except Exception as error:  # one portal's failure must not stop the others
        outcome.error = f"{type(error).__name__}: {error}"
    return outcome


def _materializations(portal: str, committed: Path, cleared: int) -> list[dg.AssetMaterialization]:
    """What a single-portal sync's ack op reports, as events for this portal's partition."""
    report = SyncReport.of(committed)
    return [dg.AssetMaterialization(SYNC_WATERMARK, partition=portal, metadata=report.watermark(cleared)),
            *(dg.AssetMaterialization(asset_key(name), partition=portal, metadata=metadata)
              for name, metadata in report.tables().items())]


@dg.job(name="sync_portals", executor_def=dg.in_process_executor,
        description="Drain the offline-event queues of several portals in one run (the sensor groups them); "
                    "each portal is reported as its own partition.")
def sync_portals_job():
    drain_portals()
