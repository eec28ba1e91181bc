"""The sensor that turns pending queue rows into ``sync_portals`` runs (many portals per run).

It never calls the destructive ``event.offline.get`` (a tick that fails would lose what it read):
push signals (``ONOFFLINEEVENT``, recorded by the receiver) say which portals have news; a few
portals per tick are also peeked with the read-only ``event.offline.list`` as a fallback, so a
tick over thousands of portals stays a handful of HTTP calls.

What it sees is reported, not just acted on: one observation of ``bitrix24/offline_queue`` per tick
(portals peeked, rows waiting, the oldest row's age), and for a portal whose queue is empty with no
run in flight, nothing parked in its error lane and its full resync done, a
``bitrix24/sync_watermark`` materialization (at most every few minutes per portal): the warehouse is
current for it, so its freshness stays green while nothing changes.
"""

import hashlib
import time
from datetime import UTC, datetime

import dagster as dg
from pydantic import BaseModel, Field

from connectors.bitrix24 import Bitrix24Error, QueuePeek
from connectors.state import Portal, PortalProgress, SensorPortalState, StateStore
from pipelines.assets import ACTIVE_RUN_STATUSES, OFFLINE_QUEUE, SYNC_WATERMARK
from pipelines.bootstrap import full_resync_portals_job
from pipelines.fleet import FAILED_TAG, PORTALS_TAG, FleetSyncConfig, sync_portals_job
from pipelines.jobs import FULL_RESYNC_JOB
from pipelines.partitions import portals
from pipelines.resources import Bitrix24Resource

POLLS_PER_TICK = 20  # fallback peeks per tick, round-robin over the portals
RESYNC_ATTEMPTS = 3  # full resyncs asked again after Dagster's own retries gave up
SYNC_PRIORITY = "10"  # dagster/priority of sync_portals runs; bootstraps have 0, maintenance -1 (pipelines.fleet)
RESYNCS_SEEN = 100  # ended full-resync runs remembered in the cursor (run update times are to the second)


class SensorCursor(BaseModel):
    """The sensor's own cursor: small and constant in size whatever the number of portals (each
    portal's state lives in the state store, `SensorPortalState`)."""

    signals: int | None = None  # the state store's push-signal sequence already read
    checked_until: float | None = None  # ended full resyncs before this (Unix s) were already looked at
    resyncs_seen: list[str] = Field(default_factory=list, max_length=RESYNCS_SEEN)  # recent ended resync runs

    @classmethod
    def parse(cls, raw: str | None) -> "SensorCursor":
        return cls.model_validate_json(raw) if raw else cls()


@dg.sensor(
    jobs=[full_resync_portals_job, sync_portals_job],
    # Every second counts toward change -> row (benchmarks/freshness.py); a tick reads the state store
    # and peeks a bounded number of portals, so ticking often stays cheap.
    minimum_interval_seconds=2,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts sync_portals runs for the portals whose offline-event queues have rows, and a full "
                "resync for every new portal.",
)
def offline_events_sensor(context: dg.SensorEvaluationContext, bitrix24: Bitrix24Resource) -> dg.SensorResult:
    cursor = SensorCursor.parse(context.cursor)
    with bitrix24.state() as state:
        return _tick(context, bitrix24, state, cursor)


def _tick(context: dg.SensorEvaluationContext, bitrix24: Bitrix24Resource, state: StateStore,
          cursor: SensorCursor) -> dg.SensorResult:
    active = {portal.key: portal for portal in state.portals()}
    signalled, cursor.signals = state.signals_since(cursor.signals)
    states = state.sensor_states()
    watch = {key: states.get(key) or SensorPortalState(key) for key in active}
    changed: set[str] = set()
    for key in signalled:
        if key in watch:
            watch[key].pending = True
            changed.add(key)

    known = set(context.instance.get_dynamic_partitions(portals.name))
    new_partitions = sorted(set(active) - known)
    requests = _full_resyncs(context, active, watch, changed, bitrix24.bootstrap_portals_per_run)

    active_runs = context.instance.get_runs(filters=dg.RunsFilter(statuses=list(ACTIVE_RUN_STATUSES)))
    busy = _portals_of(active_runs)
    requests += _failed_resyncs_again(context, cursor, watch, changed, bitrix24.bootstrap_portals_per_run)
    # A portal whose resync is asked for now gets no change sync beside it: the resync reads everything.
    busy.update(*(request.tags[PORTALS_TAG].split(",") for request in requests))
    candidates = [key for key, portal_state in watch.items() if portal_state.pending]
    candidates += _due_for_polling(watch, exclude=set(candidates), every_s=bitrix24.peek_interval_s)
    events: list[dg.AssetMaterialization | dg.AssetObservation] = []
    peeked: dict[str, QueuePeek] = {}
    progress = state.progress()
    unconfirmed: dict[str, str] = {}  # quiet portals not confirmed current, and why
    ready: list[tuple[str, str]] = []  # (portal, what its rows look like) with rows to drain
    for key in candidates:
        portal_state = watch[key]
        if key in busy:
            continue  # its run will see the rows; a pending portal stays pending until it is done
        changed.add(key)
        if portal_state.pending:
            # A push said rows are queued: trusted without a peek. Peeking every signalled portal
            # one by one took a thousand portals' tick past Dagster's 60-second limit, and a tick
            # that times out saves nothing, so the next one timed out on the same signals.
            ready.append((key, "signalled"))
            continue
        portal_state.polled_at = time.time()
        try:
            peek = _peek(bitrix24, state, key)
        except Bitrix24Error as error:
            context.log.warning(f"portal {key}: peek failed: {error}")
            continue  # peeked again when next due
        peeked[key] = peek
        confirm_due = time.time() - (portal_state.confirmed_at or 0.0) >= bitrix24.confirm_current_every_s
        if not peek.depth and key in known and confirm_due:
            blocker = _why_not_current(context, state, portal_state, progress.get(key))
            if blocker:
                unconfirmed[key] = blocker
            else:
                # Nothing queued, nothing running, nothing parked, its full resync done: the
                # warehouse holds every change of this portal.
                portal_state.confirmed_at = time.time()
                events.append(dg.AssetMaterialization(SYNC_WATERMARK, partition=key, metadata={
                    "confirmed_by": "sensor", "lag_s": 0.0, "events": 0}))
        if peek.depth:
            ready.append((key, f"{peek.head.row_id if peek.head else 0}:{peek.depth}"))
    in_flight = sum(1 for run in active_runs if run.job_name == sync_portals_job.name)
    requests += _sync_requests(watch, ready, in_flight, bitrix24)
    if peeked:
        events.append(_queue_observation(peeked, unconfirmed))
    # Saved before the tick's result is handed back: a tick that dies later re-reads the same signals
    # (the cursor did not move) and asks again under new run keys; nothing is forgotten.
    state.save_sensor_states([watch[key] for key in sorted(changed)])
    state.forget_sensor_states(sorted(set(states) - set(active)))
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[portals.build_add_request(new_partitions)] if new_partitions else [],
        asset_events=events,
        cursor=cursor.model_dump_json(),
    )


def _sync_requests(watch: dict[str, SensorPortalState], ready: list[tuple[str, str]], in_flight: int,
                   bitrix24: Bitrix24Resource) -> list[dg.RunRequest]:
    """``sync_portals`` runs for the ``ready`` portals ((portal, what its rows look like)), up to
    ``portals_per_run`` each, while fewer than ``sync_runs_in_flight`` such runs are queued or running
    (``in_flight`` are). Portals beyond that stay pending, least recently launched first next time:
    under load the runs grow toward ``portals_per_run`` instead of multiplying, since every run costs
    seconds of process start whatever it drains (benchmarks/scale.py).

    Not the partitioned ``sync`` job: its run plans every entity asset of the portal, so each table
    would show as materializing on every sync; ``sync_portals`` reports only what changed."""
    per_run = max(1, bitrix24.portals_per_run)
    room = max(0, bitrix24.sync_runs_in_flight - in_flight) * per_run
    ready = sorted(ready, key=lambda item: (watch[item[0]].polled_at or 0.0, item[0]))
    launched: list[tuple[str, str]] = []
    for key, rows in ready:
        portal_state = watch[key]
        if len(launched) >= room:
            portal_state.pending = True  # drained by a later run; no peek needed then
            continue
        # The key follows the rows and counts launches: a tick evaluated twice asks once, and a run
        # that failed on the same rows does not block the next (run keys are never reused).
        portal_state.pending = False
        portal_state.launches += 1
        portal_state.polled_at = time.time()  # handled now: not due for a fallback peek soon
        launched.append((key, f"{key}:{rows}:{portal_state.launches}"))
    # Ahead of bootstraps and maintenance (drains, reconciliation, reference refreshes) in the run
    # queue: a sync waiting behind them is what users notice.
    return _grouped_requests(sync_portals_job, "drain_portals", launched, per_run, {"dagster/priority": SYNC_PRIORITY})


def _grouped_requests(job: dg.JobDefinition, op: str, items: list[tuple[str, str]], per_run: int,
                      tags: dict[str, str] | None = None) -> list[dg.RunRequest]:
    """Runs of ``job`` over up to ``per_run`` portals each (``op``'s `FleetSyncConfig`); ``items`` are
    (portal, what makes its request unique), hashed into the run key, so a tick evaluated twice asks
    once. The portals are in a tag, so later ticks and schedules see them busy."""
    requests = []
    for start in range(0, len(items), max(1, per_run)):
        group = items[start:start + max(1, per_run)]
        keys = [key for key, _ in group]
        digest = hashlib.sha256("|".join(unique for _, unique in group).encode()).hexdigest()[:24]
        requests.append(dg.RunRequest(
            job_name=job.name, run_key=f"{job.name}:{digest}",
            run_config=dg.RunConfig(ops={op: FleetSyncConfig(portals=keys)}),
            tags={PORTALS_TAG: ",".join(keys), **(tags or {})}))
    return requests


def _full_resyncs(context: dg.SensorEvaluationContext, active: dict[str, Portal],
                  watch: dict[str, SensorPortalState], changed: set[str], per_run: int) -> list[dg.RunRequest]:
    """New (or re-installed) portals get a full resync, ``per_run`` portals per ``full_resync_portals``
    run (`pipelines.bootstrap`: bind the events, load everything, then the reference data).

    A portal counts as bootstrapped once a resync run created after its install names it (its
    partition, or its key in the run's portals tag). Until then it is asked for again on every tick,
    under the same run key while the group is the same (Dagster drops a run key it has seen), so a
    tick that dies between saving state and submitting its runs cannot leave a portal unloaded."""
    new = {key: portal.install_stamp for key, portal in active.items()
           if watch[key].bootstrapped != portal.install_stamp}
    if not new:
        return []
    named = _resync_runs_naming(context, new)
    waiting = []
    for key, installed in new.items():
        if key in named:
            watch[key].bootstrapped = installed
            watch[key].resync_attempts = 0  # a new install's resync gets its own attempts
            changed.add(key)
        else:
            waiting.append((key, f"{key}:{installed}"))
    return _grouped_requests(full_resync_portals_job, "full_resync_portal_group", waiting, per_run)


def _resync_runs_naming(context: dg.SensorEvaluationContext, new: dict[str, str], succeeded: bool = False) -> set[str]:
    """Of the ``new`` portals (key -> installed_at ISO or "unknown"), those a full resync run created
    after their install names: grouped runs by their portals tag, single-portal ones by partition.
    ``succeeded``: only runs that succeeded, and not for the portals they list as failed."""
    installs = {key: None if installed == "unknown" else datetime.fromisoformat(installed)
                for key, installed in new.items()}
    known = [moment for moment in installs.values() if moment is not None]
    since = min(known) if known and len(known) == len(installs) else None
    named: set[str] = set()
    statuses = [dg.DagsterRunStatus.SUCCESS] if succeeded else None
    for job in (full_resync_portals_job.name, FULL_RESYNC_JOB.name):
        for record in context.instance.get_run_records(dg.RunsFilter(job_name=job, created_after=since,
                                                                     statuses=statuses)):
            tags = record.dagster_run.tags
            failed = set(tags.get(FAILED_TAG, "").split(",")) if succeeded else set()
            for key in [*tags.get(PORTALS_TAG, "").split(","), tags.get("dagster/partition", "")]:
                if key in installs and key not in failed and (
                        installs[key] is None or record.create_timestamp >= installs[key]):
                    named.add(key)
    return named


def _peek(bitrix24: Bitrix24Resource, state: StateStore, portal: str) -> QueuePeek:
    with bitrix24.client(portal, state) as client:
        return bitrix24.queue(client).peek()


def _why_not_current(context: dg.SensorEvaluationContext, state: StateStore, portal_state: SensorPortalState,
                     progress: PortalProgress | None) -> str | None:
    """Why a portal with an empty queue and no run in flight is still not current (None: it is).

    An empty queue is not enough: messages parked in its error lane have not landed, and a portal
    whose full resync never completed lacks whatever the resync was to load (issue 9)."""
    if progress is not None and progress.parked:
        return f"{progress.parked} message(s) parked in the error lane"
    if not _resync_completed(context, state, portal_state, progress):
        return "its full resync has not completed"
    return None


def _resync_completed(context: dg.SensorEvaluationContext, state: StateStore, portal_state: SensorPortalState,
                      progress: PortalProgress | None) -> bool:
    """Whether the full resync of the portal's current install completed. Runs record it
    (`connectors.sync.steps`); for portals resynced before they did, a successful resync run created
    after the install that names the portal counts, and is recorded so it is asked once."""
    installed = portal_state.bootstrapped
    if installed is None:
        return False
    if progress is not None and progress.resynced == installed:
        return True
    done = _resync_runs_naming(context, {portal_state.portal: installed}, succeeded=True)
    if done:
        state.record_progress(portal_state.portal, resynced=installed)
    return bool(done)


def _queue_observation(peeked: dict[str, QueuePeek], unconfirmed: dict[str, str]) -> dg.AssetObservation:
    """One observation per tick for the whole fleet: rows waiting and the oldest one's age (seconds)
    over the portals peeked, with the busiest few named, and quiet portals that are not current."""
    now = datetime.now(UTC)
    lags = {key: (now - peek.head.timestamp).total_seconds() for key, peek in peeked.items() if peek.head}
    waiting = sorted((key for key, peek in peeked.items() if peek.depth), key=lambda key: -peeked[key].depth)
    return dg.AssetObservation(OFFLINE_QUEUE, metadata={
        "portals_peeked": len(peeked),
        "portals_with_rows": len(waiting),
        "depth": sum(peek.depth for peek in peeked.values()),
        "oldest_row_age_s": round(max(lags.values(), default=0.0), 1),
        "busiest": dg.MetadataValue.json({key: peeked[key].depth for key in waiting[:10]}),
        "portals_not_confirmed": len(unconfirmed),
        "not_confirmed_examples": dg.MetadataValue.json(dict(sorted(unconfirmed.items())[:10])),
    })


def _due_for_polling(watch: dict[str, SensorPortalState], exclude: set[str], every_s: float) -> list[str]:
    now = time.time()
    due = [key for key, portal_state in watch.items()
           if key not in exclude and now - (portal_state.polled_at or 0.0) >= every_s]
    due.sort(key=lambda key: (watch[key].polled_at or 0.0, key))  # least recently peeked first
    return due[:POLLS_PER_TICK]


def _failed_resyncs_again(context: dg.SensorEvaluationContext, cursor: SensorCursor,
                          watch: dict[str, SensorPortalState], changed: set[str],
                          per_run: int) -> list[dg.RunRequest]:
    """Portals whose full resync ended without success, and will not be retried by Dagster, are asked
    for again, a bounded number of times each (beyond that, hourly reconciliation repairs and the UI
    shows the failures): every portal of a grouped run that failed or was canceled, the portals a
    successful grouped run lists as failed (``bitrix24/failed_portals``), the partition of a failed
    single-portal run."""
    since = cursor.checked_until
    cursor.checked_until = time.time()
    if since is None:
        return []
    # Run update times are stored to the second: look a little further back, skip what was seen.
    ended = [run for job in (full_resync_portals_job.name, FULL_RESYNC_JOB.name)
             for run in context.instance.get_runs(filters=dg.RunsFilter(
                 job_name=job, statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED,
                                         dg.DagsterRunStatus.SUCCESS],
                 updated_after=datetime.fromtimestamp(since - 2, UTC)))
             if run.run_id not in cursor.resyncs_seen]
    ended = [run for run in ended if run.status is not dg.DagsterRunStatus.SUCCESS or run.tags.get(FAILED_TAG)]
    cursor.resyncs_seen = [*cursor.resyncs_seen, *(run.run_id for run in ended)][-RESYNCS_SEEN:]
    max_retries = context.instance.run_retries_max_retries if context.instance.run_retries_enabled else 0
    again: list[tuple[str, str]] = []
    for run in ended:
        retry_number = int(run.tags.get("dagster/retry_number", "0"))
        if run.status is dg.DagsterRunStatus.FAILURE and retry_number < max_retries:
            continue  # Dagster's run retries re-execute it
        if run.status is dg.DagsterRunStatus.SUCCESS:
            keys = run.tags[FAILED_TAG].split(",")
        else:
            keys = [*run.tags.get(PORTALS_TAG, "").split(","), run.tags.get("dagster/partition", "")]
        for key in dict.fromkeys(keys):
            # Asked for even while another run drains the portal: the resync waits for its claim.
            if key not in watch or watch[key].resync_attempts >= RESYNC_ATTEMPTS:
                continue
            watch[key].resync_attempts += 1
            changed.add(key)
            attempt = watch[key].resync_attempts
            context.log.warning(f"portal {key}: full resync ended without success ({run.status.value}, run "
                                f"{run.run_id}); asking again ({attempt})")
            again.append((key, f"{key}:{watch[key].bootstrapped}:{attempt}"))
    return _grouped_requests(full_resync_portals_job, "full_resync_portal_group", again, per_run)


def _portals_of(runs: list[dg.DagsterRun]) -> set[str]:
    """The portals ``runs`` work on: single-portal runs by partition, grouped ones by their tag."""
    busy = {run.tags["dagster/partition"] for run in runs if "dagster/partition" in run.tags}
    return busy.union(*(run.tags[PORTALS_TAG].split(",") for run in runs if run.tags.get(PORTALS_TAG)))
