"""Peak memory (RSS) of one sync run, for a full load of N entities and for N queued changes.

Issue 13 goal 3: one run stays under 400 MB whatever the backlog. The emulator runs in this process
(seeded and changed in-process, which is fast); each run is the product's own command line
(`python -m connectors.sync`, i.e. `steps.run_once`) in a child process, and its peak RSS is the
child's own high-water mark (``VmHWM``, read at its exit), so the emulator's memory is not counted.

1. the full load: ``--mode full_resync`` of a portal holding N deals (binds, scans, commits);
2. the change backlog: every deal updated once (N queue rows), drained by ONE run with
   ``--max-events N`` (reserve -> fetch -> commit -> ack, all of it in that run).

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/memory.py [--entities 100000 1000000] [--per-step]``.
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

# With ``--per-step``: each step's own peak, the high-water mark reset before it (``clear_refs``), the
# largest over the run's rounds; and the RSS after the imports. The run's overall peak is then the
# largest of these, so the headline figures come from runs without this.
PER_STEP = """
import json, re, sys
import connectors.sync.steps as steps

def _status(name):
    return int(re.search(name + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) // 1024

peaks = {"imports": _status("VmRSS")}
for name in ("reserve", "fetch", "commit", "ack"):
    def _wrapped(*args, _step=getattr(steps, name), _name=name, **kwargs):
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current RSS
        try:
            return _step(*args, **kwargs)
        finally:
            peaks[_name] = max(peaks.get(_name, 0), _status("VmHWM"))
            peaks[_name + " (after)"] = _status("VmRSS")
    setattr(steps, name, _wrapped)
import atexit
atexit.register(lambda: print("STEP_PEAKS_MB=" + json.dumps(peaks), file=sys.stderr))
""" + RUNNER


def run_sync(emu: ThreadEmulator, scratch: Path, mode: str, max_events: int, per_step: bool = False) -> dict:
    """One run of `python -m connectors.sync` in a child; its peak RSS (MB), wall time and output."""
    env = {**os.environ, "B24_CLIENT_ID": emu.client_id, "B24_CLIENT_SECRET": emu.client_secret,
           "B24_OAUTH_TOKEN_URL": f"{emu.url}/oauth/token/", "B24_STAGING_DIR": str(scratch / "staging"),
           "PYTHONPATH": str(REPO)}
    env.pop("B24WH_FAILPOINT", None)
    started = time.perf_counter()
    with (scratch / f"{mode}.out").open("w+") as out, (scratch / f"{mode}.err").open("w+") as err:
        child = subprocess.Popen(
            [sys.executable, "-c", PER_STEP if per_step else RUNNER, "--portal", PORTAL,
             "--warehouse", str(scratch / "wh.duckdb"),
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
        errors = err.read()
        peak_kb = int(re.findall(r"VmHWM_KB=(\d+)", errors)[-1])
        steps = json.loads(re.findall(r"STEP_PEAKS_MB=(.+)", errors)[-1]) if per_step else {}
    if steps:  # the high-water mark was reset before each step: the run's peak is the largest step's
        peak_kb = max(steps.values()) * 1024
    return {"peak_rss_mb": peak_kb / 1024, "wall_s": wall, "summary": summary, "steps": steps}


def change_every_deal(emu: ThreadEmulator, count: int) -> float:
    """Each deal updated once by a UI user (one queue row each), in-process; returns seconds."""
    portal = emu.world.portals[PORTAL]
    origin = Origin(user_id=2)
    started = time.perf_counter()
    with portal.lock:
        for entity_id in range(1, count + 1):
            portal.crm.write("deal", "update", entity_id, {"COMMENTS": "changed"}, origin)
    return time.perf_counter() - started


def measure(count: int, per_step: bool = False) -> dict:
    # Each size is measured in its own child of this script (main), so the emulators of the
    # sizes never share a process.
    seed = {"deal": count, "contact": 0, "company": 0, "lead": 0, "activity": 0, "item": 0}
    with tempfile.TemporaryDirectory() as scratch_dir, \
            run_emulator(limits=False, plan="professional", counts=seed, seed=1) as emu:
        scratch = Path(scratch_dir)
        FileTokenStore(scratch / "tokens").save(PORTAL, emu.install_tokens())
        full = run_sync(emu, scratch, "full_resync", 25_000, per_step)
        changed_s = change_every_deal(emu, count)
        changes = run_sync(emu, scratch, "changes", count, per_step)
    return {"entities": count, "full_load": full, "changes": changes, "seed_changes_s": changed_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entities", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--per-step", action="store_true",
                        help="also each step's own peak (reserve, fetch, commit, ack: the largest over the rounds)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.per_step)))
        return
    results = []
    for count in args.entities:
        flags = ["--per-step"] if args.per_step else []
        done = subprocess.run([sys.executable, __file__, "--one", str(count), *flags], capture_output=True, text=True,
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
    if args.per_step:
        print("\nper step (MB; VmHWM reset before each step, the largest over the rounds; 'after': RSS at its end)")
        for result in results:
            for name in ("full_load", "changes"):
                print(f"{result['entities']:>10,} {name:<10} " + ", ".join(
                    f"{step} {mb}" for step, mb in result[name]["steps"].items()))
    for result in results:
        suffix = "1m" if result["entities"] == 1_000_000 else str(result["entities"])
        print(f"peak_rss_mb_full_load_{suffix}={result['full_load']['peak_rss_mb']:.0f}")
        print(f"peak_rss_mb_changes_{suffix}={result['changes']['peak_rss_mb']:.0f}")


if __name__ == "__main__":
    main()
