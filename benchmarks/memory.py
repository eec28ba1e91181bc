"""Peak memory (RSS) of one sync run, for a full load of N entities and for N queued changes.

Issue 13 goal 3: one run stays under 400 MB whatever the backlog. The emulator runs in this process
(seeded and changed in-process, which is fast); each run is the product's own command line
(`python -m connectors.sync`, i.e. `steps.run_once`) in a child process, and its peak RSS is the
child's own high-water mark (``VmHWM``, read at its exit), so the emulator's memory is not counted.

1. the full load: ``--mode full_resync`` of a portal holding N deals (binds, scans, commits);
2. the change backlog: every deal updated once (N queue rows), drained by ONE run with
   ``--max-events N`` (reserve -> fetch -> commit -> ack, all of it in that run).

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/memory.py [--entities 100000 1000000]``.
Prints per size ``peak_rss_mb_full_load_<n>=`` and ``peak_rss_mb_changes_<n>=``; the last lines are
``peak_rss_mb_full_load_1m=`` and ``peak_rss_mb_changes_1m=`` when 1,000,000 was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from connectors.bitrix24 import FileTokenStore
from emulator.events import Origin
from emulator.testing import ThreadEmulator, run_emulator

PORTAL = "default"
REPO = Path(__file__).resolve().parent.parent
# The run, with its own peak RSS (VmHWM) written to stderr at exit. Not ``ru_maxrss`` of the child:
# Linux carries the parent's high-water mark over fork+exec into it, and the parent here holds the
# emulator (gigabytes for a million entities).
RUNNER = """
import atexit, re, runpy, sys
def _report():
    status = open("/proc/self/status").read()
    print("VmHWM_KB=" + re.search(r"VmHWM:\\s+(\\d+)", status).group(1), file=sys.stderr)
atexit.register(_report)
sys.argv = ["connectors.sync", *sys.argv[1:]]
runpy.run_module("connectors.sync", run_name="__main__")
"""


def run_sync(emu: ThreadEmulator, scratch: Path, mode: str, max_events: int) -> dict:
    """One run of `python -m connectors.sync` in a child; its peak RSS (MB), wall time and output."""
    env = {**os.environ, "B24_CLIENT_ID": emu.client_id, "B24_CLIENT_SECRET": emu.client_secret,
           "B24_OAUTH_TOKEN_URL": f"{emu.url}/oauth/token/", "B24_STAGING_DIR": str(scratch / "staging"),
           "PYTHONPATH": str(REPO)}
    env.pop("B24WH_FAILPOINT", None)
    started = time.perf_counter()
    with (scratch / f"{mode}.out").open("w+") as out, (scratch / f"{mode}.err").open("w+") as err:
        child = subprocess.Popen(
            [sys.executable, "-c", RUNNER, "--portal", PORTAL, "--warehouse", str(scratch / "wh.duckdb"),
             "--tokens-dir", str(scratch / "tokens"), "--mode", mode, "--max-events", str(max_events),
             "--burst", "1000000", "--drain-per-s", "1000000"],
            env=env, cwd=REPO, stdout=out, stderr=err)
        child.wait()
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise RuntimeError(f"{mode} run failed ({child.returncode}):\n{err.read()[-3000:]}")
        summary = json.loads(out.read().strip().splitlines()[-1])
        peak_kb = int(re.findall(r"VmHWM_KB=(\d+)", err.read())[-1])
    return {"peak_rss_mb": peak_kb / 1024, "wall_s": wall, "summary": summary}


def change_every_deal(emu: ThreadEmulator, count: int) -> float:
    """Each deal updated once by a UI user (one queue row each), in-process; returns seconds."""
    portal = emu.world.portals[PORTAL]
    origin = Origin(user_id=2)
    started = time.perf_counter()
    with portal.lock:
        for entity_id in range(1, count + 1):
            portal.crm.write("deal", "update", entity_id, {"COMMENTS": "changed"}, origin)
    return time.perf_counter() - started


def measure(count: int) -> dict:
    # Each size is measured in its own child of this script (main), so the emulators of the
    # sizes never share a process.
    seed = {"deal": count, "contact": 0, "company": 0, "lead": 0, "activity": 0, "item": 0}
    with tempfile.TemporaryDirectory() as scratch_dir, \
            run_emulator(limits=False, plan="professional", counts=seed, seed=1) as emu:
        scratch = Path(scratch_dir)
        FileTokenStore(scratch / "tokens").save(PORTAL, emu.install_tokens())
        full = run_sync(emu, scratch, "full_resync", 25_000)
        changed_s = change_every_deal(emu, count)
        changes = run_sync(emu, scratch, "changes", count)
    return {"entities": count, "full_load": full, "changes": changes, "seed_changes_s": changed_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entities", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    results = []
    for count in args.entities:
        done = subprocess.run([sys.executable, __file__, "--one", str(count)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
        if done.returncode != 0:
            raise SystemExit(f"measuring {count:,} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'entities':>10} | {'run':<28} | {'peak RSS MB':>11} | {'wall s':>8} | rows")
    print("-" * 76)
    for result in results:
        for name, label in (("full_load", "full load (full_resync)"), ("changes", "changes, one run")):
            run = result[name]
            rows = sum(t["rows_upserted"] + t["tombstones"] for t in run["summary"]["tables"].values())
            print(f"{result['entities']:>10,} | {label:<28} | {run['peak_rss_mb']:>11.0f} | {run['wall_s']:>8.1f} | "
                  f"{rows:,} ({run['summary']['usage']} requests)")
    for result in results:
        suffix = "1m" if result["entities"] == 1_000_000 else str(result["entities"])
        print(f"peak_rss_mb_full_load_{suffix}={result['full_load']['peak_rss_mb']:.0f}")
        print(f"peak_rss_mb_changes_{suffix}={result['changes']['peak_rss_mb']:.0f}")


if __name__ == "__main__":
    main()
