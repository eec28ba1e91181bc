"""Change -> warehouse row latency under a real `dagster dev`, with push signals and with polling only.

For each mode: start the emulator (standard limits), the receiver and `dagster dev`; wait for the
portal's full resync; then, one at a time, change a deal's title in the portal (as a UI user) and
time until the DuckDB snapshot shows the new title. Also reports the wall time of the sync runs
and where each change's seconds went, read from Dagster's own event log of the run that loaded it:

- sensor:  change -> run created (push signal, sensor tick interval, the tick itself)
- queue:   run created -> dequeued by the run coordinator (its dequeue interval)
- launch:  dequeued -> RUN_START (a new process: interpreter, code location import, resources)
- ops:     RUN_START -> the commit op's success (reserve, fetch, commit; the snapshot is published
           inside commit), with each op's own time and the hand-overs between them
- seen:    commit success -> the benchmark saw the row (its 0.2 s poll)

    python benchmarks/freshness.py [--changes 20] [--modes push,poll] [--dequeue-interval 1]

``--dequeue-interval`` sets the QueuedRunCoordinator's ``dequeue_interval_seconds`` in the instance
(Dagster's default is 5). Last line: ``p95_change_to_row_s=<seconds>`` (push mode).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emulator.testing import run_emulator_process  # noqa: E402
from tests.e2e.stack import running_stack  # noqa: E402

COUNTS = {"deal": 2000, "contact": 1000, "company": 300, "lead": 500, "activity": 1000, "item": 100}


def snapshot_title(path: Path, deal_id: int) -> str | None:
    if not path.exists():
        return None
    try:
        with duckdb.connect(str(path), read_only=True) as con:
            row = con.execute("select title from deals where id = ?", [deal_id]).fetchone()
    except duckdb.Error:
        return None  # replaced while we opened it: look again
    return row[0] if row else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


PHASES = ("sensor", "queue", "launch", "drain", "run overhead", "seen")


def breakdown(instance, change_at: float, seen_at: float) -> dict[str, float] | None:
    """Seconds per phase for the first sync run created after ``change_at`` (epoch seconds)."""
    import dagster as dg

    runs = [run for run in instance.get_runs(filters=dg.RunsFilter(job_name="sync_portals"))]
    records = [instance.get_run_record_by_id(run.run_id) for run in runs]
    after = sorted((r for r in records if r and r.create_timestamp.timestamp() >= change_at - 0.5),
                   key=lambda r: r.create_timestamp)
    if not after:
        return None
    record = after[0]
    stamps: dict[str, float] = {}
    steps: dict[str, dict[str, float]] = {}
    for entry in instance.all_logs(record.dagster_run.run_id):
        event = entry.dagster_event
        if event is None:
            continue
        name = event.event_type_value
        if event.step_key:
            steps.setdefault(event.step_key.rsplit(".", 1)[-1], {}).setdefault(name, entry.timestamp)
        else:
            stamps.setdefault(name, entry.timestamp)
    created = record.create_timestamp.timestamp()
    dequeued = stamps.get("PIPELINE_DEQUEUED", stamps.get("PIPELINE_STARTING", created))
    started = stamps.get("PIPELINE_START", dequeued)
    # One op drains the portal (reserve -> fetch -> commit -> ack, pipelines.fleet).
    drain = steps.get("drain_portals", {})
    drain_s = drain.get("STEP_SUCCESS", started) - drain.get("STEP_START", started)
    committed = drain.get("STEP_SUCCESS", started)
    return {"sensor": created - change_at, "queue": dequeued - created, "launch": started - dequeued,
            "drain": drain_s, "run overhead": committed - started - drain_s, "seen": seen_at - committed}


def measure(mode: str, changes: int, workdir: Path, dequeue_interval: int | None = None) -> dict:
    env: dict[str, str] = {}
    settings = None
    if dequeue_interval is not None:
        settings = {"run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator",
                                        "config": {"dequeue_interval_seconds": dequeue_interval}}}
    with run_emulator_process(counts=COUNTS, seed=9, limits=True, plan="professional") as emu:
        warehouse = workdir / "warehouse.duckdb"
        snapshot = workdir / "warehouse.snapshot.duckdb"
        with running_stack(emu, workdir, str(warehouse), extra_env=env, push=(mode == "push"),
                           instance_settings=settings, code_location="benchmarks.freshness_location") as stack:
            stack.wait_until(stack.loaded_portals, 600, "the full resync")
            stack.wait_until_drained()
            latencies: list[float] = []
            moments: list[tuple[float, float]] = []
            for number in range(changes):
                deal_id = 1 + number * 7
                title = f"freshness {mode} {number} {time.time():.3f}"
                started, change_at = time.monotonic(), time.time()
                emu.write("deal", "update", id=deal_id, fields={"TITLE": title})
                while snapshot_title(snapshot, deal_id) != title:
                    if time.monotonic() - started > 300:
                        raise SystemExit(f"{mode}: change {number} not in the warehouse after 300 s")
                    time.sleep(0.2)
                latencies.append(time.monotonic() - started)
                moments.append((change_at, time.time()))
                stack.wait_until_drained()  # the next change starts from an idle system
            with stack.instance() as instance:
                phases = [b for b in (breakdown(instance, *moment) for moment in moments) if b]
                durations = []
                for run in stack.runs("sync_portals"):
                    record = instance.get_run_record_by_id(run.run_id)
                    if record and record.start_time and record.end_time:
                        durations.append(record.end_time - record.start_time)
    return {"p50": statistics.median(latencies), "p95": percentile(latencies, 0.95), "max": max(latencies),
            "runs": len(durations), "run_s": statistics.median(durations) if durations else float("nan"),
            "phases": {name: statistics.median(b[name] for b in phases) for name in PHASES} if phases else {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--modes", default="push,poll")
    parser.add_argument("--dequeue-interval", type=int, default=None,
                        help="QueuedRunCoordinator dequeue_interval_seconds (Dagster's default: 5)")
    args = parser.parse_args()
    results = {}
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory(prefix=f"freshness-{mode}-") as workdir:
            results[mode] = measure(mode, args.changes, Path(workdir), args.dequeue_interval)
        print(f"{mode}: {results[mode]}", flush=True)
    print()
    print("| mode | changes | p50 change→row (s) | p95 (s) | max (s) | sync runs | median run wall time (s) |")
    print("|---|---|---|---|---|---|---|")
    for mode, r in results.items():
        print(f"| {mode} | {args.changes} | {r['p50']:.1f} | {r['p95']:.1f} | {r['max']:.1f} | {r['runs']} | "
              f"{r['run_s']:.1f} |")
    print()
    print("median seconds per phase: | mode | " + " | ".join(PHASES) + " |")
    for mode, r in results.items():
        print(f"| {mode} | " + " | ".join(f"{r['phases'].get(name, float('nan')):.2f}" for name in PHASES) + " |")
    headline = results.get("push") or next(iter(results.values()))
    print(f"p95_change_to_row_s={headline['p95']:.1f}")


if __name__ == "__main__":
    main()
