"""Change -> warehouse row latency under a real `dagster dev`, with push signals and with polling only.

For each mode: start the emulator (standard limits), the receiver and `dagster dev`; wait for the
portal's full resync; then, one at a time, change a deal's title in the portal (as a UI user) and
time until the DuckDB snapshot shows the new title. Also reports the wall time of the sync runs
(Dagster's overhead per run: process start, resources, four ops).

    python benchmarks/freshness.py [--changes 20] [--modes push,poll]

Last line: ``p95_change_to_row_s=<seconds>`` (push mode).
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


def measure(mode: str, changes: int, workdir: Path) -> dict[str, float]:
    env = {"B24_POLL_INTERVAL_S": "10"}
    with run_emulator_process(counts=COUNTS, seed=9, limits=True, plan="professional") as emu:
        warehouse = workdir / "warehouse.duckdb"
        snapshot = workdir / "warehouse.snapshot.duckdb"
        with running_stack(emu, workdir, str(warehouse), extra_env=env, push=(mode == "push")) as stack:
            stack.wait_until(lambda: any(r.is_success for r in stack.runs("full_resync")), 600, "the full resync")
            latencies: list[float] = []
            for number in range(changes):
                deal_id = 1 + number * 7
                title = f"freshness {mode} {number} {time.time():.3f}"
                started = time.monotonic()
                emu.write("deal", "update", id=deal_id, fields={"TITLE": title})
                while snapshot_title(snapshot, deal_id) != title:
                    if time.monotonic() - started > 300:
                        raise SystemExit(f"{mode}: change {number} not in the warehouse after 300 s")
                    time.sleep(0.2)
                latencies.append(time.monotonic() - started)
                time.sleep(1.0)
            with stack.instance() as instance:
                durations = []
                for run in stack.runs("sync"):
                    record = instance.get_run_record_by_id(run.run_id)
                    if record and record.start_time and record.end_time:
                        durations.append(record.end_time - record.start_time)
    return {"p50": statistics.median(latencies), "p95": percentile(latencies, 0.95), "max": max(latencies),
            "runs": len(durations), "run_s": statistics.median(durations) if durations else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--modes", default="push,poll")
    args = parser.parse_args()
    results = {}
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory(prefix=f"freshness-{mode}-") as workdir:
            results[mode] = measure(mode, args.changes, Path(workdir))
        print(f"{mode}: {results[mode]}", flush=True)
    print()
    print("| mode | changes | p50 change→row (s) | p95 (s) | max (s) | sync runs | median run wall time (s) |")
    print("|---|---|---|---|---|---|---|")
    for mode, r in results.items():
        print(f"| {mode} | {args.changes} | {r['p50']:.1f} | {r['p95']:.1f} | {r['max']:.1f} | {r['runs']} | "
              f"{r['run_s']:.1f} |")
    headline = results.get("push") or next(iter(results.values()))
    print(f"p95_change_to_row_s={headline['p95']:.1f}")


if __name__ == "__main__":
    main()
