"""Soak: CRM activity, ~25% transport faults and random SIGKILLs of the sync; afterwards nothing is lost.

One emulator (in this process) and one DuckDB warehouse. After a clean full resync, each trial lets
the emulator's activity generator change the portal, then runs ``python -m connectors.sync`` again
and again under a mixture of faults on every REST call (5xx, HTML error pages, JSON bodies cut in
half, connections dropped after the call ran, expired access tokens) and on the OAuth token endpoint,
with a chance per run of a SIGKILL (at one of the sync's failpoints or after a random delay). Most
runs take the change queue, some drain the error lane, a few resync in full. A trial converges when a
run exits cleanly and our queue is empty. Then the faults are cleared, one clean change run (and a
clean error-lane drain if anything is parked) runs, and the trial is checked:

- the warehouse equals the emulator's ground truth (`tests.ground_truth.compare`);
- no (portal, id) is stored twice;
- nothing is parked in the ``_error_lane`` ledger and our connector's queue is empty;
- no staged files are left under ``B24_STAGING_DIR`` and no ``b24wh-*`` in the runs' TMPDIR.

    python benchmarks/soak.py [--trials 30] [--seed 1] [--fault-rate 0.25] [--kill-rate 0.3]

Last line: ``soak_trials=<n> kills=<k> lost=<objects> duplicates=<rows> leftover_staging=<entries>``;
the exit status is 1 when any check failed (the failing trial, seed and differences are printed).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from connectors.bitrix24 import FileTokenStore  # noqa: E402
from connectors.sync.failpoints import POINTS  # noqa: E402
from connectors.sync.portal import DEFAULT_CONNECTOR  # noqa: E402
from emulator.testing import ThreadEmulator, run_emulator  # noqa: E402
from tests.ground_truth import compare, duckdb_rows, entity_tables  # noqa: E402

PORTAL = "default"
COUNTS = {"deal": 300, "contact": 150, "company": 60, "lead": 80, "activity": 100, "item": 40}
# Faults on every REST call. 500 and HTML answer before the method runs; a cut-off body and a dropped
# connection come after it ran (the portal changed state, the answer is lost): the hard case.
REST_FAULTS = ("http_500", "html", "malformed_json", "drop", "expire_token")
# Token-endpoint faults answer before the refresh runs: a refresh whose answer is lost after the
# server rotated the pair leaves no usable refresh token (a used one is invalid, facts §7.2): only a
# reinstall recovers from that, so the soak does not inject it.
OAUTH_FAULTS = ("http_500", "html", "malformed_json", "drop")
TRACKED = 10**9  # a fault's `count`; what it has used up is how often it fired
MAX_RUNS_PER_TRIAL = 30
RUN_TIMEOUT_S = 240.0
MODE_WEIGHTS = {"changes": 0.83, "error_lane": 0.12, "full_resync": 0.05}


@dataclass
class Trial:
    number: int
    runs: int = 0
    kills: int = 0
    failed: int = 0  # runs that exited non-zero without being killed
    timeouts: int = 0
    modes: dict[str, int] = field(default_factory=dict)
    parked_before_drain: int = 0
    converged: bool = False
    problems: list[str] = field(default_factory=list)
    lost: int = 0
    duplicates: int = 0
    leftover: int = 0
    seconds: float = 0.0


class Soak:
    """One emulator, one warehouse and the sync runs against them (each a child process)."""

    def __init__(self, emu: ThreadEmulator, workdir: Path, rng: random.Random, fault_rate: float,
                 kill_rate: float) -> None:
        self.emu = emu
        self.rng = rng
        self.fault_rate = fault_rate
        self.kill_rate = kill_rate
        self.warehouse = workdir / "warehouse.duckdb"
        self.tokens_dir = workdir / "tokens"
        self.staging = workdir / "staging"
        self.tmpdir = workdir / "tmp"
        self.tmpdir.mkdir()
        FileTokenStore(self.tokens_dir).save(PORTAL, emu.install_tokens())
        self.env = {**os.environ, "B24_CLIENT_ID": emu.client_id, "B24_CLIENT_SECRET": emu.client_secret,
                    "B24_OAUTH_TOKEN_URL": emu.token_url, "B24_STAGING_DIR": str(self.staging),
                    "TMPDIR": str(self.tmpdir), "PYTHONPATH": str(REPO)}
        self.env.pop("B24WH_FAILPOINT", None)
        self.env.pop("B24WH_FAILPOINT_ONCE", None)
        self.fired = {"rest": 0, "oauth": 0}
        self.last_stderr = ""

    # -- faults ---------------------------------------------------------------------------------

    def inject_faults(self) -> None:
        """Faults on ``*`` whose combined chance per request is ``fault_rate`` (the first match fires)."""
        rate = 1 - (1 - self.fault_rate) ** (1 / len(REST_FAULTS))
        for kind in REST_FAULTS:
            self.emu.add_fault("*", kind, rate=rate, count=TRACKED)
        rate = 1 - (1 - self.fault_rate) ** (1 / len(OAUTH_FAULTS))
        for kind in OAUTH_FAULTS:
            self.emu.add_oauth_fault("token", kind, rate=rate, count=TRACKED, phase="before")

    def clear_faults(self) -> None:
        """Remove the faults and add what they fired to the totals."""
        rest = self.emu.control.get(f"portals/{PORTAL}/faults").json()["faults"]
        oauth = self.emu.control.get("oauth").json()["faults"]
        self.fired["rest"] += sum(TRACKED - fault["count"] for fault in rest)
        self.fired["oauth"] += sum(TRACKED - fault["count"] for fault in oauth)
        self.emu.clear_faults()
        self.emu.clear_oauth_faults()

    # -- runs -----------------------------------------------------------------------------------

    def run(self, mode: str, kill: str | None = None) -> int:
        """One sync run; ``kill`` is a failpoint name or ``"timer"``. Returns the exit code (-9 = killed)."""
        env = dict(self.env)
        if kill in POINTS:
            env["B24WH_FAILPOINT"] = kill
        command = [sys.executable, "-m", "connectors.sync", "--portal", PORTAL, "--warehouse", str(self.warehouse),
                   "--tokens-dir", str(self.tokens_dir), "--mode", mode, "--max-events", "300",
                   "--burst", "200", "--drain-per-s", "50"]
        with subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) as process:
            limit = self.rng.uniform(0.3, 4.0) if kill == "timer" else RUN_TIMEOUT_S
            try:
                _, self.last_stderr = process.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                process.kill()
                _, self.last_stderr = process.communicate()
                if kill != "timer":
                    return -999  # hung: counted as a failure, never as a kill
            return process.returncode

    def our_queue(self) -> list[dict]:
        return [row for row in self.emu.queue() if row["CONNECTOR_ID"] == DEFAULT_CONNECTOR]

    # -- checks ---------------------------------------------------------------------------------

    def parked(self) -> int:
        with duckdb.connect(str(self.warehouse), read_only=True) as con:
            tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
            if "_error_lane" not in tables:
                return 0
            return con.execute("select count(*) from _error_lane where portal = ? and status = 'parked'",
                               [PORTAL]).fetchone()[0]

    def duplicates(self) -> int:
        """Rows beyond the first per (portal, id), over every entity table."""
        extra = 0
        with duckdb.connect(str(self.warehouse), read_only=True) as con:
            present = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
            for table, _ in entity_tables(self.emu).values():
                if table in present:
                    extra += con.execute(f"select count(*) - count(distinct (portal, id)) from {table}").fetchone()[0]
        return extra

    def describe(self, rows: list[dict]) -> str:
        """Left-over queue rows by (ERROR, PROCESS_ID) with that process id's journal status."""
        with duckdb.connect(str(self.warehouse), read_only=True) as con:
            journal = dict(con.execute("select process_id, status from _cdc_journal where portal = ?",
                                       [PORTAL]).fetchall())
        groups = Counter((str(row.get("ERROR")), str(row.get("PROCESS_ID") or "")) for row in rows)
        return "; ".join(f"{count} rows ERROR={error} PROCESS_ID={pid or '-'} journal={journal.get(pid, '-')}"
                         for (error, pid), count in groups.most_common())

    def leftover_staging(self) -> list[str]:
        staged = [str(path) for portal_dir in self.staging.glob("*") for path in portal_dir.iterdir()]
        return staged + [str(path) for path in self.tmpdir.glob("b24wh-*")]


def objects_differing(problems: list[str]) -> int:
    """Objects named by `compare`'s problem lines ("deals: 3 missing, e.g. [...]"); 1 for a line without a count."""
    total = 0
    for problem in problems:
        found = re.search(r": (\d+) ", problem)
        total += int(found.group(1)) if found else 1
    return total


def run_trial(soak: Soak, number: int, verbose: bool = False) -> Trial:
    trial = Trial(number)
    started = time.monotonic()
    rng = soak.rng
    # The activity goes on into the first runs, so they race it; it stops after a second or two.
    soak.emu.start_activity(rng.uniform(100, 250), seed=rng.randrange(2**31))
    activity = threading.Timer(rng.uniform(0.8, 2.0), soak.emu.stop_activity)
    activity.start()
    time.sleep(0.3)
    soak.inject_faults()
    try:
        while trial.runs < MAX_RUNS_PER_TRIAL:
            mode = rng.choices(list(MODE_WEIGHTS), weights=list(MODE_WEIGHTS.values()))[0]
            kill = rng.choice([*POINTS, "timer", "timer"]) if rng.random() < soak.kill_rate else None
            began = time.monotonic()
            code = soak.run(mode, kill)
            if verbose:
                tail = soak.last_stderr.strip().splitlines()[-1:] if code not in (0, -9) else []
                print(f"    {mode} kill={kill} code={code} {time.monotonic() - began:.1f}s {tail}", flush=True)
            trial.runs += 1
            trial.modes[mode] = trial.modes.get(mode, 0) + 1
            if code == -9:
                trial.kills += 1
            elif code == -999:
                trial.timeouts += 1
            elif code != 0:
                trial.failed += 1
            elif not activity.is_alive() and not soak.our_queue():
                trial.converged = True
                break
    finally:
        activity.cancel()
        activity.join()
        soak.emu.stop_activity()
        soak.clear_faults()

    if soak.run("changes") != 0:
        trial.problems.append(f"the clean change run failed: {soak.last_stderr[-2000:]}")
    trial.parked_before_drain = soak.parked()
    if trial.parked_before_drain and soak.run("error_lane") != 0:
        trial.problems.append(f"the clean error-lane drain failed: {soak.last_stderr[-2000:]}")
    if not trial.converged:
        trial.problems.append(f"no clean run with an empty queue within {MAX_RUNS_PER_TRIAL} runs under faults")
    differences = compare(soak.emu, duckdb_rows(str(soak.warehouse), PORTAL))
    trial.lost = objects_differing([p for p in differences if not p.endswith("duplicate ids")])
    trial.problems += differences
    trial.duplicates = soak.duplicates()
    if trial.duplicates:
        trial.problems.append(f"{trial.duplicates} duplicate rows")
    parked, queued = soak.parked(), soak.our_queue()
    if parked:
        trial.problems.append(f"{parked} messages still parked in _error_lane")
    if queued:
        trial.problems.append(f"{len(queued)} rows left in the queue of {DEFAULT_CONNECTOR}: {soak.describe(queued)}")
    leftover = soak.leftover_staging()
    trial.leftover = len(leftover)
    if leftover:
        trial.problems.append(f"leftover staging: {leftover[:5]}")
    trial.seconds = time.monotonic() - started
    return trial


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fault-rate", type=float, default=0.25, help="chance that a request meets a fault")
    parser.add_argument("--kill-rate", type=float, default=0.3, help="chance that a run is SIGKILLed")
    parser.add_argument("--verbose", action="store_true", help="print every run and why it failed")
    args = parser.parse_args(argv)

    started = time.monotonic()
    rng = random.Random(args.seed)
    trials: list[Trial] = []
    with tempfile.TemporaryDirectory(prefix="soak-") as workdir, \
            run_emulator(limits=False, counts=COUNTS, seed=args.seed) as emu:
        soak = Soak(emu, Path(workdir), rng, args.fault_rate, args.kill_rate)
        if soak.run("full_resync") != 0:
            print(f"the initial full resync failed: {soak.last_stderr[-3000:]}", file=sys.stderr)
            return 1
        print(f"seed={args.seed} fault_rate={args.fault_rate} kill_rate={args.kill_rate} "
              f"objects={sum(COUNTS.values())}", flush=True)
        for number in range(1, args.trials + 1):
            trial = run_trial(soak, number, args.verbose)
            trials.append(trial)
            modes = " ".join(f"{mode}={count}" for mode, count in sorted(trial.modes.items()))
            print(f"trial {number:>3}: runs={trial.runs} ({modes}) kills={trial.kills} failed={trial.failed} "
                  f"timeouts={trial.timeouts} parked_before_drain={trial.parked_before_drain} "
                  f"{'ok' if not trial.problems else 'FAILED'} {trial.seconds:.1f}s", flush=True)
            if trial.problems:
                print(f"  seed={args.seed} trial={number}:", *trial.problems, sep="\n  ", flush=True)
                break  # later trials would inherit this trial's state
        fired = dict(soak.fired)

    runs = sum(t.runs for t in trials)
    kills = sum(t.kills for t in trials)
    lost = sum(t.lost for t in trials)
    duplicates = sum(t.duplicates for t in trials)
    leftover = sum(t.leftover for t in trials)
    failed = sum(t.failed + t.timeouts for t in trials)
    rows = [("trials", len(trials)), ("sync runs under faults", runs), ("SIGKILLs", kills),
            ("faults fired on REST calls", fired["rest"]), ("faults fired on the token endpoint", fired["oauth"]),
            ("runs that failed (not killed)", failed),
            ("max runs to converge", max((t.runs for t in trials), default=0)),
            ("messages parked, drained clean", sum(t.parked_before_drain for t in trials)),
            ("wall time", f"{time.monotonic() - started:.0f} s")]
    print("\n| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"soak_trials={len(trials)} kills={kills} lost={lost} duplicates={duplicates} leftover_staging={leftover}")
    return 1 if any(t.problems for t in trials) or len(trials) < args.trials else 0


if __name__ == "__main__":
    sys.exit(main())
