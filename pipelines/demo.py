"""`make demo`: the whole product on one machine, against the embedded Bitrix24 emulator.

Starts, in order: the receiver (install callback and push signals), the emulator with a demo portal
whose app install POSTs to the receiver (the real install flow), simulated users changing CRM data,
and `dagster dev` with the sensor running and a DuckDB warehouse. Ctrl-C (or SIGTERM, SIGHUP) stops
everything.

Every start is fresh: the emulator seeds its portal anew each time, so the product state left in the
state directory by an earlier demo (warehouse, snapshot, state store with the portal's tokens, Dagster
home, staging) would disagree with it, and is removed first. ``--keep-state`` keeps it (for looking
at an earlier demo's warehouse or runs, not for continuing it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
CLIENT_ID = "local.emulator.app"
CLIENT_SECRET = "emulator-secret"  # the emulator's built-in demo app; never a real secret
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# What an earlier demo leaves in its state directory, by name (globs), so that a --state-dir pointing
# somewhere else never loses unrelated files. Logs stay: they are appended to, run after run.
PRODUCT_STATE = ("warehouse.*", "state.sqlite3*", "dagster_home", "staging")


class StopRequested(Exception):
    """A stop signal arrived while the demo was starting."""


def free_port(preferred: int = 0) -> int:
    """``preferred`` if it is free, else any free port (0: any)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:
            probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, timeout_s: float, process: subprocess.Popen,
             stop_requested: Callable[[], bool] = lambda: False) -> None:
    """Poll ``url`` until it answers below 500. Raises SystemExit if ``process`` exits or ``timeout_s``
    passes, StopRequested as soon as ``stop_requested()`` is true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if stop_requested():
            raise StopRequested
        if process.poll() is not None:
            raise SystemExit(f"{process.args[2] if len(process.args) > 2 else process.args} exited early")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not answer within {timeout_s:.0f} s")


def _process_table() -> dict[int, tuple[int, int]]:
    """Live (not zombie) processes as ``pid -> (parent pid, process group)``, from /proc."""
    table: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it exited meanwhile
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ")".
        state, ppid, pgrp = stat[stat.rindex(")") + 2:].split()[:3]
        if state not in ("Z", "X"):
            table[int(entry.name)] = (int(ppid), int(pgrp))
    return table


def _descendants(roots: set[int], table: dict[int, tuple[int, int]]) -> set[int]:
    found, frontier = set(), set(roots)
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


class Processes:
    """Child processes, each in its own session and process group, so one SIGINT to the group reaches
    `dagster dev` and the webserver, daemon and code servers it starts (dagster-notes "Signal trap")."""

    def __init__(self, log_dir: Path, grace_s: float = 20.0) -> None:
        self.log_dir = log_dir
        self.grace_s = grace_s
        self.children: list[subprocess.Popen] = []
        self.stop_signal: int | None = None
        self._stopped = False

    def start(self, name: str, args: Sequence[str], env: dict[str, str]) -> subprocess.Popen:
        """Start ``args`` with its output in ``<log_dir>/<name>.log``."""
        with (self.log_dir / f"{name}.log").open("ab") as log:
            child = subprocess.Popen(list(args), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.children.append(child)
        return child

    def handle_stop_signals(self) -> None:
        """Make SIGINT, SIGTERM and SIGHUP request a stop; the first one counts, later ones change nothing.
        The children do not see them (own sessions): `stop` signals them once, itself."""
        for stop_signal in STOP_SIGNALS:
            signal.signal(stop_signal, self._request_stop)

    def _request_stop(self, signum: int, frame: object) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum

    def stop_requested(self) -> bool:
        return self.stop_signal is not None

    def wait(self, poll_s: float = 0.5) -> str:
        """Block until a stop signal arrives or a child exits; says which."""
        while self.stop_signal is None:
            if any(child.poll() is not None for child in self.children):
                return "a component exited"
            time.sleep(poll_s)
        return f"stopping on {signal.Signals(self.stop_signal).name}"

    def stop(self) -> None:
        """Stop every child exactly once: SIGINT to each live child's process group, then wait up to
        ``grace_s`` for the groups and every descendant (also those that left the group) to end, then
        SIGKILL what is left. Idempotent; stop signals arriving meanwhile are only recorded."""
        if self._stopped:
            return
        self._stopped = True
        # start_new_session makes each child the leader of a group with its own pid; a group outlives
        # its leader when the leader exited first, so its members are signalled all the same.
        groups = {child.pid for child in self.children}
        table = _process_table()
        tracked = _descendants({child.pid for child in self.children}, table) | groups
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGINT)
        deadline = time.monotonic() + self.grace_s
        while True:
            for child in self.children:
                child.poll()  # reaps the leaders, so they stop counting as alive
            table = _process_table()
            left = {pid for pid, (_, pgrp) in table.items() if pid in tracked or pgrp in groups}
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for child in self.children:
            child.wait()


def reset_state(state_dir: Path) -> list[Path]:
    """Remove an earlier demo's product state from ``state_dir`` (see PRODUCT_STATE); returns what went."""
    removed = sorted(path for pattern in PRODUCT_STATE for path in state_dir.glob(pattern))
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def prepare_state_dir(state_dir: Path, keep_state: bool) -> str:
    """Create ``state_dir`` for a demo, fresh unless ``keep_state``; returns the line to print about it."""
    removed = [] if keep_state or not state_dir.exists() else reset_state(state_dir)
    if keep_state:
        note = f"Keeping the earlier demo's state in {state_dir} (--keep-state)."
    elif removed:
        note = (f"Fresh start: removed the earlier demo's state from {state_dir} "
                f"({', '.join(path.name for path in removed)}); --keep-state keeps it.")
    else:
        note = f"Fresh start in {state_dir}."
    (state_dir / "dagster_home").mkdir(parents=True, exist_ok=True)
    (state_dir / "logs").mkdir(exist_ok=True)
    shutil.copy(REPO / "pipelines" / "dagster.yaml", state_dir / "dagster_home" / "dagster.yaml")
    return note


def demo_environment(state_dir: Path, emulator_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DAGSTER_HOME": str(state_dir / "dagster_home"),
        "B24_CLIENT_ID": CLIENT_ID,
        "B24_CLIENT_SECRET": CLIENT_SECRET,
        "B24_OAUTH_TOKEN_URL": f"{emulator_url}/oauth/token/",
        # The emulator's default portal owns its root /rest/, so its OAuth server's app.info (which
        # the receiver verifies installs with) lives under /oauth/rest/.
        "B24_OAUTH_SERVER_ENDPOINT": f"{emulator_url}/oauth/rest/",
        "B24_STATE_STORE": str(state_dir / "state.sqlite3"),
        "B24_WAREHOUSE": str(state_dir / "warehouse.duckdb"),
        "B24_STAGING_DIR": str(state_dir / "staging"),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=REPO / ".demo")
    parser.add_argument("--ui-port", type=int, default=3000)
    parser.add_argument("--activity-per-s", type=float, default=2.0,
                        help="simulated user changes per second (0: none, the portal stays as seeded)")
    parser.add_argument("--deals", type=int, default=5000)
    parser.add_argument("--keep-state", action="store_true",
                        help="keep the earlier demo's warehouse, state store and Dagster home (default: "
                             "remove them, since the emulator starts from its seed every time)")
    args = parser.parse_args(argv)
    if args.activity_per_s < 0:
        parser.error("--activity-per-s must be 0 or more")

    from connectors.receiver.app import portal_key  # the key the receiver gives the demo's portal

    state_dir = args.state_dir.resolve()
    processes = Processes(state_dir / "logs")
    # Handled before anything starts, so a signal at any moment stops whatever was started, once.
    processes.handle_stop_signals()
    print(prepare_state_dir(state_dir, args.keep_state), flush=True)

    emulator_port, receiver_port = free_port(8130), free_port(8131)
    ui_port = free_port(args.ui_port)
    emulator_url, receiver_url = f"http://127.0.0.1:{emulator_port}", f"http://127.0.0.1:{receiver_port}"
    env = demo_environment(state_dir, emulator_url)
    python = sys.executable
    try:
        receiver = processes.start("receiver", [
            python, "-m", "connectors.receiver", "--host", "127.0.0.1", "--port", str(receiver_port),
            "--public-url", receiver_url], env)
        wait_for(f"{receiver_url}/health", 60, receiver, processes.stop_requested)
        emulator = processes.start("emulator", [
            python, "-m", "emulator", "serve", "--host", "127.0.0.1", "--port", str(emulator_port),
            "--plan", "professional", "--deals", str(args.deals), "--contacts", str(args.deals // 2),
            "--companies", str(args.deals // 5), "--leads", str(args.deals // 2),
            "--activities", str(args.deals), "--items", str(args.deals // 10),
            "--app-handler-url", f"{receiver_url}/install"], env)
        wait_for(f"{emulator_url}/_emulator/health", 120, emulator, processes.stop_requested)
        if args.activity_per_s > 0:
            httpx.post(f"{emulator_url}/_emulator/portals/default/activity",
                       json={"rate_per_s": args.activity_per_s}, timeout=10).raise_for_status()
        dagster = processes.start("dagster", [
            python, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(ui_port)], env)
        wait_for(f"http://127.0.0.1:{ui_port}/server_info", 180, dagster, processes.stop_requested)
        print(f"""
Bitrix24 -> DuckDB demo is running.
  Dagster UI        http://127.0.0.1:{ui_port}   (sensor offline_events_sensor is on)
  Bitrix24 portal   {emulator_url}/_emulator/   (emulator; {args.activity_per_s}/s simulated user changes)
  Portal key        {portal_key(f"{emulator_url}/rest/")}   (the Dagster partition; --portal of the CLIs)
  Warehouse         {state_dir / 'warehouse.duckdb'}  (analysts: open the .snapshot.duckdb beside it)
  Logs              {state_dir / 'logs'}
Ctrl-C stops everything.""", flush=True)
        outcome = processes.wait()
        print(f"{outcome}; see the logs" if outcome.startswith("a component") else f"{outcome} ...",
              file=sys.stderr, flush=True)
    except StopRequested:
        print(f"stopping on {signal.Signals(processes.stop_signal or signal.SIGINT).name} ...",
              file=sys.stderr, flush=True)
    finally:
        processes.stop()
    print("stopped.", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
