"""Many portals on one machine: change -> warehouse row latency and cost per change under `dagster dev`.

For each P in ``--portals`` (default 10 100): a fresh PostgreSQL database holds Dagster's storage
(the instance of ``deploy/instance/dagster.postgres.yaml``), the state store (schema
``bitrix24_state``) and the warehouse (schema ``warehouse``). One emulator process hosts P portals
(20 deals and 10 contacts each, plan professional, standard limits on); the app is installed on each
through the real flow (the emulator POSTs the install callback to our receiver, which verifies it with
the OAuth server and binds the events with push, ``ONOFFLINEEVENT``, on). `dagster dev` runs the
product (`benchmarks.scale_location`); the benchmark waits until every portal's full resync
succeeded (bounded by ``--max-bootstrap-s``), then changes deals for ``--duration-s``: each portal
about once a minute (Poisson), 1 % of them ten times as often. Each change is a deal title
``scale-<uuid>`` written as a UI user, and its time is recorded here; its row's time is the
``_synced_at`` of the first ``deals_history`` version carrying that title or a later change's title
of the same deal (a sync reads the deal's current state, so a change overwritten before the next sync
lands with the later one). ``_synced_at`` is PostgreSQL's ``now()`` in the committing transaction
(its start), a few milliseconds before the commit makes the row visible.

Costs are measured over the activity phase (first change to the last change landing): Dagster runs
created, rows added to Dagster's ``event_logs``, HTTP requests and 503 answers the portals served
(emulator stats), CPU seconds of the `dagster dev` process tree and the receiver (user + system of
every process, including children that exited and were waited for; psutil), peak RSS of that tree
(sum) and of its largest process; then, to show whether the machine's CPU is the floor, the share of
all cores busy over the phase and the CPU seconds of the emulator and of the PostgreSQL server (every
backend, counted apart from the product's).

    python benchmarks/scale.py [--portals 10 100 1000] [--duration-s 300] [--max-bootstrap-s 1200]

Prints a table, how each figure grows from the smallest to the largest P, and last
``p95_change_to_row_s_<P>_portals=<s>`` for the largest P whose activity phase ran.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psutil
import psycopg
import yaml
from dagster._core.scheduler.instigation import InstigatorType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emulator.testing import ProcessEmulator, run_emulator_process  # noqa: E402
from pipelines.fleet import FAILED_TAG, PORTALS_TAG  # noqa: E402
from tests.e2e.stack import ACTIVE, Stack, running_stack  # noqa: E402

PG_SERVER = os.environ.get("B24_SCALE_PG_SERVER", "postgresql://postgres@127.0.0.1:5432")
SEED_COUNTS = {"deal": 20, "contact": 10, "company": 0, "lead": 0, "activity": 0, "item": 0}
WAREHOUSE_SCHEMA = "warehouse"
TITLE_PREFIX = "scale-"
CODE_LOCATION = "benchmarks.scale_location"
POLL_S = 3.0


# -- places ----------------------------------------------------------------------------------------

@contextmanager
def fresh_database(name: str) -> Iterator[str]:
    """Create database ``name`` on the benchmark's PostgreSQL server, yield its DSN, drop it afterwards."""
    admin = f"{PG_SERVER}/postgres"
    with psycopg.connect(admin, autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        con.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def instance_settings(dsn: str) -> dict:
    """The deployment's PostgreSQL instance (deploy/instance/dagster.postgres.yaml), storage at ``dsn``."""
    settings = yaml.safe_load((REPO / "deploy" / "instance" / "dagster.postgres.yaml").read_text())
    settings["storage"] = {"postgres": {"postgres_url": dsn}}
    return settings


# -- processes: CPU and memory -----------------------------------------------------------------------

@dataclass(frozen=True)
class Usage:
    at: float  # time.time()
    cpu_s: float  # user + system of the live tree, plus what its exited (waited-for) descendants used
    rss_sum: int  # bytes
    rss_max: int
    processes: int


def tree_usage(roots: Sequence[int]) -> Usage:
    """CPU and memory of ``roots`` and all their descendants, now.

    A process's ``children_user/children_system`` hold its descendants that exited and were waited
    for; adding them to every live process's own times counts each CPU second once."""
    procs: list[psutil.Process] = []
    for pid in roots:
        try:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    cpu, rss = 0.0, []
    for proc in procs:
        try:
            times = proc.cpu_times()
            cpu += times.user + times.system + times.children_user + times.children_system
            rss.append(proc.memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # exited meanwhile (ZombieProcess included)
            continue
    return Usage(time.time(), cpu, sum(rss), max(rss, default=0), len(rss))


def postgres_roots() -> list[int]:
    """The PostgreSQL server's main processes on this machine (a ``postgres`` process whose parent is
    not one): `tree_usage` over them counts every backend, including those that exited."""
    roots = []
    for proc in psutil.process_iter(["name", "ppid"]):
        try:
            if proc.info["name"] == "postgres" and psutil.Process(proc.info["ppid"]).name() != "postgres":
                roots.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return roots


@dataclass(frozen=True)
class MachineUsage:
    """Where the machine's CPU went, as cumulative counters to subtract: the whole machine (busy and
    total CPU seconds over every core), the emulator's process and the PostgreSQL server."""

    busy_s: float
    total_s: float
    emulator_cpu_s: float
    postgres_cpu_s: float

    @classmethod
    def now(cls, emulator_pid: int) -> MachineUsage:
        times = psutil.cpu_times()._asdict()
        # Linux counts guest time inside user time already; iowait is idle time waiting on disk.
        total = sum(value for name, value in times.items() if name not in ("guest", "guest_nice"))
        idle = times["idle"] + times.get("iowait", 0.0)
        return cls(total - idle, total, tree_usage([emulator_pid]).cpu_s, tree_usage(postgres_roots()).cpu_s)

    def busy_since(self, before: MachineUsage) -> float:
        """Share of all cores' time that was not idle between ``before`` and this reading."""
        return (self.busy_s - before.busy_s) / max(1e-9, self.total_s - before.total_s)


class Sampler(threading.Thread):
    """Samples `tree_usage` every ``every_s`` seconds for peak memory between two times."""

    def __init__(self, roots: Sequence[int], every_s: float = 1.0) -> None:
        super().__init__(daemon=True, name="usage-sampler")
        self.roots = list(roots)
        self.every_s = every_s
        self.samples: list[Usage] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append(tree_usage(self.roots))
            self._halt.wait(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def now(self) -> Usage:
        usage = tree_usage(self.roots)
        self.samples.append(usage)
        return usage

    def peaks(self, since: float, until: float) -> tuple[int, int]:
        """(peak RSS sum, peak RSS of one process) in bytes over the samples in [since, until]."""
        window = [s for s in self.samples if since <= s.at <= until]
        return max((s.rss_sum for s in window), default=0), max((s.rss_max for s in window), default=0)


# -- the activity --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    portal: str  # emulator portal name
    key: str  # our portal key (partition, warehouse ``portal`` column)
    deal: int
    title: str
    at: float  # time.time() just before the write was sent


def activity_plan(names: Sequence[str], duration_s: float, rng: random.Random, *, per_portal_per_min: float = 1.0,
                  busy_share: float = 0.01, busy_factor: float = 10.0) -> tuple[list[tuple[float, str]], list[str]]:
    """When each portal changes: a Poisson process per portal over ``[0, duration_s)`` seconds, about
    ``per_portal_per_min`` a minute, ``busy_factor`` times that for ``busy_share`` of the portals (at
    least one). Returns ``([(offset_s, name)], busy names)`` sorted by offset."""
    busy = sorted(rng.sample(list(names), max(1, round(len(names) * busy_share))))
    plan = []
    for name in names:
        rate_per_s = per_portal_per_min / 60.0 * (busy_factor if name in busy else 1.0)
        offset = rng.expovariate(rate_per_s)
        while offset < duration_s:
            plan.append((offset, name))
            offset += rng.expovariate(rate_per_s)
    plan.sort()
    return plan, busy


def landing_times(changes: Sequence[Change], versions: dict[tuple[str, int], list[tuple[str, float]]]
                  ) -> list[float | None]:
    """Per change (same order): seconds from the change to the first warehouse version holding it, or
    None while none does. A version holds a change when it carries its title or a later change's title
    of the same deal (``versions``: (key, deal id) -> [(title, synced_at Unix s)])."""
    by_deal: dict[tuple[str, int], list[int]] = defaultdict(list)
    for number, change in enumerate(changes):
        by_deal[(change.key, change.deal)].append(number)
    result: list[float | None] = [None] * len(changes)
    for deal, numbers in by_deal.items():
        numbers.sort(key=lambda n: changes[n].at)
        order = {changes[n].title: i for i, n in enumerate(numbers)}
        first_seen = [math.inf] * len(numbers)
        for title, synced_at in versions.get(deal, []):
            if title in order:
                first_seen[order[title]] = min(first_seen[order[title]], synced_at)
        earliest = math.inf
        for i in reversed(range(len(numbers))):  # a later change's version also holds this one
            earliest = min(earliest, first_seen[i])
            if earliest < math.inf:
                result[numbers[i]] = earliest - changes[numbers[i]].at
    return result


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else math.nan


# -- one P -----------------------------------------------------------------------------------------------

@dataclass
class Bootstrap:
    done: int
    total: int
    seconds: float
    complete: bool
    failed_runs: int = 0


@dataclass
class Activity:
    changes: int
    landed: int
    latencies: list[float]
    per_portal: dict[str, list[float]]
    busy: list[str]
    seconds: float  # first change to the end of the phase (all landed, or the drain bound)
    runs: Counter
    event_rows: int
    event_types: Counter
    http_requests: int
    status_503: int
    cpu_s: float
    rss_peak_sum: int
    rss_peak_max: int
    generator_slip_s: float  # how far the writes fell behind their plan at worst
    machine_busy: float = math.nan  # share of all cores' time not idle over the phase
    emulator_cpu_s: float = math.nan
    postgres_cpu_s: float = math.nan
    sensor_tick_s: list[float] = field(default_factory=list)


@dataclass
class Bench:
    """A running stack over P portals, with what the benchmark measures on it."""

    emu: ProcessEmulator
    stack: Stack
    dsn: str
    sampler: Sampler
    ready_at: float  # time.time() when `dagster dev` answered
    stack_up_s: float  # installs + `dagster dev` start
    instance: dg.DagsterInstance

    @property
    def names(self) -> list[str]:
        return list(self.stack.keys)

    def _check_alive(self) -> None:
        for child in self.stack.processes.children:
            if child.poll() is not None:
                raise RuntimeError(f"{child.args[:4]} exited; logs in {self.stack.home}/logs")

    def bootstrap(self, max_s: float, progress_every_s: float = 30.0) -> Bootstrap:
        """Wait until every portal's full resync succeeded, at most ``max_s`` seconds after `dagster dev` came up."""
        keys = set(self.stack.keys.values())
        reported = time.time()
        while True:
            self._check_alive()
            done, failed = self.bootstrapped()
            elapsed = time.time() - self.ready_at
            if keys <= done:
                return Bootstrap(len(keys), len(keys), elapsed, True, failed)
            if elapsed > max_s:
                return Bootstrap(len(keys & done), len(keys), elapsed, False, failed)
            if time.time() - reported >= progress_every_s:
                reported = time.time()
                print(f"  bootstrap: {len(keys & done)}/{len(keys)} portals after {elapsed:.0f} s "
                      f"({failed} failed runs so far)", file=sys.stderr, flush=True)
            time.sleep(POLL_S if len(keys) <= 100 else 10.0)

    def bootstrapped(self) -> tuple[set[str], int]:
        """(portal keys whose full resync succeeded, failed full-resync runs): single-portal ``full_resync``
        runs, and the portals of ``full_resync_portals`` runs that succeeded, less the run's failed part."""
        done: set[str] = set()
        failed = 0
        for job in ("full_resync", "full_resync_portals"):
            for run in self.instance.get_runs(filters=dg.RunsFilter(job_name=job)):
                if run.status is dg.DagsterRunStatus.FAILURE:
                    failed += 1
                if run.status is not dg.DagsterRunStatus.SUCCESS:
                    continue
                if job == "full_resync":
                    done.add(run.tags.get("dagster/partition"))
                else:
                    parts = set(filter(None, run.tags.get(FAILED_TAG, "").split(",")))
                    done |= set(filter(None, run.tags.get(PORTALS_TAG, "").split(","))) - parts
        return done, failed

    def deal_ids(self, name: str) -> list[int]:
        return sorted(row["id"] for row in self.emu.truth("deal", portal=name) if not row["deleted"])

    def portal_stats(self) -> tuple[int, int]:
        """(HTTP requests, 503 answers) served so far, summed over the portals."""
        requests = answers_503 = 0
        for name in self.names:
            stats = self.emu.stats(name)
            requests += stats["http_requests"]
            answers_503 += stats["status"].get("503", 0)
        return requests, answers_503

    def event_log_position(self) -> int:
        with psycopg.connect(self.dsn) as con:
            return con.execute("select coalesce(max(id), 0) from event_logs").fetchone()[0]

    def event_rows_since(self, position: int) -> Counter:
        with psycopg.connect(self.dsn) as con:
            rows = con.execute("select coalesce(dagster_event_type, 'log message'), count(*) from event_logs "
                               "where id > %s group by 1", (position,)).fetchall()
        return Counter(dict(rows))

    def versions(self) -> dict[tuple[str, int], list[tuple[str, float]]]:
        """Every warehouse version of a deal the benchmark titled: (key, id) -> [(title, synced_at)]."""
        found: dict[tuple[str, int], list[tuple[str, float]]] = defaultdict(list)
        with psycopg.connect(self.dsn) as con:
            exists = con.execute("select 1 from information_schema.tables where table_schema = %s "
                                 "and table_name = 'deals_history'", (WAREHOUSE_SCHEMA,)).fetchone()
            if not exists:
                return found
            for key, deal, title, synced_at in con.execute(
                    f'select portal, id, title, extract(epoch from _synced_at)::float8 '
                    f'from "{WAREHOUSE_SCHEMA}".deals_history where title like %s', (TITLE_PREFIX + "%",)):
                found[(key, deal)].append((title, synced_at))
        return found

    def sensor_ticks(self, since: float, until: float) -> list[float]:
        """Durations (s) of the sensor's ticks that started in [since, until]."""
        states = self.instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        sensor = next(state for state in states if state.instigator_name == "offline_events_sensor")
        ticks = self.instance.get_ticks(sensor.instigator_origin_id, sensor.selector_id, limit=100_000,
                                        after=since, before=until)
        return [tick.end_timestamp - tick.timestamp for tick in ticks if tick.end_timestamp]

    def activity(self, duration_s: float, drain_timeout_s: float, rng: random.Random, *,
                 per_portal_per_min: float = 1.0, busy_share: float = 0.01, busy_factor: float = 10.0) -> Activity:
        """Change deals for ``duration_s`` seconds (see `activity_plan`), then wait at most
        ``drain_timeout_s`` seconds for every change to land; measure the phase."""
        deals = {name: itertools.cycle(rng.sample(ids, len(ids))) for name in self.names
                 if (ids := self.deal_ids(name))}
        plan, busy = activity_plan(self.names, duration_s, rng, per_portal_per_min=per_portal_per_min,
                                   busy_share=busy_share, busy_factor=busy_factor)
        http_before, s503_before = self.portal_stats()
        events_before = self.event_log_position()
        usage_before = self.sampler.now()
        machine_before = MachineUsage.now(self.emu.process.pid)
        started = time.time()
        started_mono = time.monotonic()
        changes: list[Change] = []
        slip = 0.0
        for offset, name in plan:
            delay = started_mono + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            slip = max(slip, -delay)
            deal, title = next(deals[name]), f"{TITLE_PREFIX}{uuid.uuid4()}"
            at = time.time()
            self.emu.write("deal", "update", deal, {"TITLE": title}, portal=name)
            changes.append(Change(name, self.stack.keys[name], deal, title, at))
        time.sleep(max(0.0, started_mono + duration_s - time.monotonic()))
        print(f"  activity: {len(changes)} changes over {duration_s:.0f} s; waiting for them to land",
              file=sys.stderr, flush=True)
        deadline = time.monotonic() + drain_timeout_s
        while True:
            self._check_alive()
            landed = landing_times(changes, self.versions())
            if all(value is not None for value in landed) or time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        ended = time.time()
        usage_after = self.sampler.now()
        machine_after = MachineUsage.now(self.emu.process.pid)
        events = self.event_rows_since(events_before)
        http_after, s503_after = self.portal_stats()
        runs = Counter(run.job_name for run in self.instance.get_runs(
            filters=dg.RunsFilter(created_after=datetime.fromtimestamp(started, UTC))))
        rss_sum, rss_max = self.sampler.peaks(started, ended)
        per_portal: dict[str, list[float]] = defaultdict(list)
        for change, seconds in zip(changes, landed, strict=True):
            if seconds is not None:
                per_portal[change.portal].append(seconds)
        try:
            ticks = self.sensor_ticks(started, ended)
        except Exception as error:  # a diagnostic only: never lose the measurement over it
            print(f"  (sensor tick durations unavailable: {type(error).__name__}: {error})", file=sys.stderr)
            ticks = []
        return Activity(
            changes=len(changes), landed=sum(1 for value in landed if value is not None),
            latencies=[value for value in landed if value is not None], per_portal=dict(per_portal), busy=busy,
            seconds=ended - started, runs=runs, event_rows=sum(events.values()), event_types=events,
            http_requests=http_after - http_before, status_503=s503_after - s503_before,
            cpu_s=usage_after.cpu_s - usage_before.cpu_s, rss_peak_sum=rss_sum, rss_peak_max=rss_max,
            generator_slip_s=slip, sensor_tick_s=ticks,
            machine_busy=machine_after.busy_since(machine_before),
            emulator_cpu_s=machine_after.emulator_cpu_s - machine_before.emulator_cpu_s,
            postgres_cpu_s=machine_after.postgres_cpu_s - machine_before.postgres_cpu_s)

    def wait_until_idle(self, timeout_s: float) -> bool:
        """No run active, twice in a row, within ``timeout_s``; says whether that happened."""
        calm: list[bool] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            calm.append(not self.instance.get_runs(filters=dg.RunsFilter(statuses=ACTIVE), limit=1))
            if calm[-2:] == [True, True]:
                return True
            time.sleep(POLL_S)
        return False


@contextmanager
def scale_stack(portal_count: int, workdir: Path, *, seed: int = 1,
                portals_per_run: int | None = None) -> Iterator[Bench]:
    """The product over ``portal_count`` emulator portals, every store in a fresh PostgreSQL database."""
    database = f"scale_{os.getpid()}_{portal_count}"
    with fresh_database(database) as dsn, run_emulator_process(counts=SEED_COUNTS, smart_process_types=0, seed=seed,
                                                               limits=True, plan="professional") as emu:
        names = [f"p{number:04d}" for number in range(portal_count)]
        for number, name in enumerate(names):
            emu.create_portal(name, plan="professional", seed=seed + number, counts=SEED_COUNTS,
                              smart_process_types=0)
        env = {"B24_STATE_STORE": dsn, "B24_SCALE_PORTALS_PER_RUN": str(portals_per_run or "")}
        warehouse = f"{dsn}?schema={WAREHOUSE_SCHEMA}"
        began = time.monotonic()
        with running_stack(emu, workdir, warehouse, extra_env=env, instance_settings=instance_settings(dsn),
                           code_location=CODE_LOCATION, portals=names) as stack:
            stack_up_s = time.monotonic() - began
            sampler = Sampler([child.pid for child in stack.processes.children])
            sampler.start()
            try:
                with stack.instance() as instance:
                    yield Bench(emu, stack, dsn, sampler, time.time(), stack_up_s, instance)
            finally:
                sampler.stop()


# -- reporting -----------------------------------------------------------------------------------------

@dataclass
class Result:
    portals: int
    stack_up_s: float
    bootstrap: Bootstrap
    bootstrap_rss: tuple[int, int] = (0, 0)
    activity: Activity | None = None

    def figures(self) -> dict[str, float]:
        a = self.activity
        if a is None:
            return {}
        per_change = max(1, a.changes)
        worst = max((max(values) for values in a.per_portal.values()), default=math.nan)
        worst_p95 = max((percentile(values, 0.95) for values in a.per_portal.values()), default=math.nan)
        return {
            "p50 s": statistics.median(a.latencies) if a.latencies else math.nan,
            "p95 s": percentile(a.latencies, 0.95),
            "max s": max(a.latencies, default=math.nan),
            "worst portal p95 s": worst_p95,
            "worst portal max s": worst,
            "runs/min": sum(a.runs.values()) / (a.seconds / 60.0),
            "event-log rows/change": a.event_rows / per_change,
            "HTTP requests/change": a.http_requests / per_change,
            "503s": a.status_503,
            "CPU s/change": a.cpu_s / per_change,
            "machine CPU busy %": 100.0 * a.machine_busy,
            "emulator CPU s/change": a.emulator_cpu_s / per_change,
            "PostgreSQL CPU s/change": a.postgres_cpu_s / per_change,
            "peak RSS tree MB": a.rss_peak_sum / 2**20,
            "peak RSS largest MB": a.rss_peak_max / 2**20,
        }


def describe(r: Result) -> list[str]:
    """What one P measured besides the table: bootstrap, runs by job, sensor ticks, event-log rows."""
    lines: list[str] = []
    b = r.bootstrap
    state = "complete" if b.complete else f"INCOMPLETE ({b.done}/{b.total}; bound --max-bootstrap-s)"
    lines.append(f"P={r.portals}: installs + dagster dev up {r.stack_up_s:.0f} s; bootstrap (every portal's full "
                 f"resync succeeded) {b.seconds:.0f} s, {state}, {b.failed_runs} failed full_resync runs; "
                 f"peak RSS during bootstrap {r.bootstrap_rss[0] / 2**20:.0f} MB tree, "
                 f"{r.bootstrap_rss[1] / 2**20:.0f} MB largest")
    if not b.complete and b.done:
        rate = b.done / b.seconds
        lines.append(f"  at {rate * 60:.1f} portals/min the {b.total} portals would take about "
                     f"{b.total / rate / 60:.0f} min to bootstrap")
    a = r.activity
    if a is None:
        lines.append("  no activity phase (bootstrap incomplete)")
        return lines
    ticks = a.sensor_tick_s
    lines.append(f"  {a.changes} changes ({a.landed} landed) in {a.seconds:.0f} s; busy portals {a.busy}; "
                 f"writes behind plan at worst {a.generator_slip_s:.1f} s; runs {dict(a.runs)}; "
                 f"sensor ticks {len(ticks)}, median {statistics.median(ticks) if ticks else math.nan:.2f} s, "
                 f"max {max(ticks, default=math.nan):.2f} s")
    lines.append(f"  event-log rows by type: {dict(a.event_types.most_common(8))}")
    return lines


def report(results: Sequence[Result], args: argparse.Namespace, load_before: float) -> str:
    lines = [f"scale benchmark: {args.duration_s:.0f} s of activity, about {args.rate_per_min:g} change per portal "
             f"per minute, {args.busy_share:.0%} of portals x{args.busy_factor:g}; {os.cpu_count()} cores, "
             f"1-min load average {load_before:.1f} before the first P", ""]
    for r in results:
        lines += describe(r)
    measured = [r for r in results if r.activity is not None]
    if measured:
        names = list(measured[0].figures())
        lines += ["", "| P | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for r in measured:
            lines.append(f"| {r.portals} | " + " | ".join(_fmt(v) for v in r.figures().values()) + " |")
        if len(measured) > 1:
            small, large = measured[0], measured[-1]
            growth = []
            for name in names:
                a, b = small.figures()[name], large.figures()[name]
                growth.append(f"{name} x{b / a:.2f}" if a and not math.isnan(a) and not math.isnan(b)
                              else f"{name} {_fmt(a)} -> {_fmt(b)}")
            lines += ["", f"growth from P={small.portals} to P={large.portals} "
                          f"({large.portals / small.portals:g}x portals): " + "; ".join(growth)]
        top = measured[-1]
        if top.portals != 1000:
            lines.append(f"(P=1000 not measured: {_why_not_1000(results)})")
        lines.append(f"p95_change_to_row_s_{top.portals}_portals={top.figures()['p95 s']:.1f}")
    else:
        lines.append("no activity phase ran: no p95 to report")
    return "\n".join(lines)


def _why_not_1000(results: Sequence[Result]) -> str:
    for r in results:
        if r.portals == 1000 and not r.bootstrap.complete:
            return (f"its bootstrap did not finish within the bound "
                    f"({r.bootstrap.done}/1000 in {r.bootstrap.seconds:.0f} s)")
    done = [r for r in results if r.bootstrap.done]
    if not done:
        return "not asked for (--portals)"
    largest = max(done, key=lambda r: r.portals)
    per_min = largest.bootstrap.done / largest.bootstrap.seconds * 60.0
    return (f"not asked for; at the {per_min:.1f} portals/min the P={largest.portals} bootstrap reached, "
            f"1000 portals would take about {1000 / per_min:.0f} min "
            f"to bootstrap on this machine")


def _fmt(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "-"
    if 0 < abs(value) < 0.1:
        return f"{value:.2g}"  # a small cost per change keeps two significant digits, not "0.00"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def measure(portal_count: int, workdir: Path, args: argparse.Namespace) -> Result:
    rng = random.Random(args.seed * 1_000_003 + portal_count)
    print(f"P={portal_count}: starting (work directory {workdir})", file=sys.stderr, flush=True)
    with scale_stack(portal_count, workdir, seed=args.seed, portals_per_run=args.portals_per_run) as bench:
        boot = bench.bootstrap(args.max_bootstrap_s)
        result = Result(portal_count, bench.stack_up_s, boot,
                        bench.sampler.peaks(bench.ready_at - bench.stack_up_s, time.time()))
        print(f"  bootstrap {'done' if boot.complete else 'INCOMPLETE'}: {boot.done}/{boot.total} in "
              f"{boot.seconds:.0f} s", file=sys.stderr, flush=True)
        if boot.complete:
            # Let the bootstrap's runs end so the phase measures the activity, not the tail of the resyncs.
            bench.wait_until_idle(120.0)
            result.activity = bench.activity(args.duration_s, args.drain_timeout_s, rng,
                                             per_portal_per_min=args.rate_per_min, busy_share=args.busy_share,
                                             busy_factor=args.busy_factor)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--portals", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--duration-s", type=float, default=300.0, help="length of the activity phase")
    parser.add_argument("--max-bootstrap-s", type=float, default=1200.0,
                        help="give up waiting for the full resyncs after this long (then no activity phase)")
    parser.add_argument("--drain-timeout-s", type=float, default=600.0,
                        help="after the activity, wait at most this long for every change to land")
    parser.add_argument("--rate-per-min", type=float, default=1.0, help="changes per portal per minute")
    parser.add_argument("--busy-share", type=float, default=0.01, help="share of portals that are busier")
    parser.add_argument("--busy-factor", type=float, default=10.0, help="how much busier")
    parser.add_argument("--portals-per-run", type=int, default=None,
                        help="Bitrix24Resource.portals_per_run (default: the product's)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the work directories (logs, Dagster home)")
    args = parser.parse_args(argv)
    # Stop cleanly on SIGTERM, and on SIGINT even when started in the background (where the shell
    # ignores SIGINT, and the children would inherit that): the finally blocks stop the stack and
    # drop the database.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"stopped by signal {signum}"))

    results = []
    load_before = os.getloadavg()[0]
    for portal_count in sorted(args.portals):
        workdir = Path(tempfile.mkdtemp(prefix=f"scale-{portal_count}-"))
        try:
            results.append(measure(portal_count, workdir, args))
            print("\n".join(describe(results[-1])), flush=True)
        finally:
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    print(report(results, args, load_before), flush=True)


if __name__ == "__main__":
    main()
