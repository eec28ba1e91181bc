"""`make demo`: the whole product on one machine, against the embedded Bitrix24 emulator.

Starts, in order: the receiver (install callback and push signals), the emulator with a demo portal
whose app install POSTs to the receiver (the real install flow), simulated users changing CRM data,
and `dagster dev` with the sensor running and a DuckDB warehouse. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
CLIENT_ID = "local.emulator.app"
CLIENT_SECRET = "emulator-secret"  # the emulator's built-in demo app; never a real secret


def free_port(preferred: int = 0) -> int:
    """``preferred`` if it is free, else any free port (0: any)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:
            probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, timeout_s: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[2] if len(process.args) > 2 else process.args} exited early")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not answer within {timeout_s:.0f} s")


class Processes:
    """Child processes in their own sessions, stopped with SIGINT to the group (dagster-notes)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[subprocess.Popen] = []

    def start(self, name: str, args: Sequence[str], env: dict[str, str]) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("ab")
        child = subprocess.Popen(list(args), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        self.children.append(child)
        return child

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGINT)
        deadline = time.monotonic() + 20
        for child in reversed(self.children):
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=REPO / ".demo")
    parser.add_argument("--ui-port", type=int, default=3000)
    parser.add_argument("--activity-per-s", type=float, default=2.0, help="simulated user changes per second")
    parser.add_argument("--deals", type=int, default=5000)
    parser.add_argument("--fresh", action="store_true", help="start from an empty state directory")
    args = parser.parse_args(argv)

    state_dir = args.state_dir.resolve()
    if args.fresh and state_dir.exists():
        shutil.rmtree(state_dir)
    (state_dir / "dagster_home").mkdir(parents=True, exist_ok=True)
    (state_dir / "logs").mkdir(exist_ok=True)
    shutil.copy(REPO / "pipelines" / "dagster.yaml", state_dir / "dagster_home" / "dagster.yaml")

    emulator_port, receiver_port = free_port(8130), free_port(8131)
    ui_port = free_port(args.ui_port)
    emulator_url, receiver_url = f"http://127.0.0.1:{emulator_port}", f"http://127.0.0.1:{receiver_port}"
    env = demo_environment(state_dir, emulator_url)
    python = sys.executable
    processes = Processes(state_dir / "logs")
    # `kill` or a closed terminal stops the children too, as Ctrl-C does (they run in their own sessions).
    for stop_signal in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop_signal, _interrupt)
    try:
        receiver = processes.start("receiver", [
            python, "-m", "connectors.receiver", "--host", "127.0.0.1", "--port", str(receiver_port),
            "--public-url", receiver_url], env)
        wait_for(f"{receiver_url}/health", 60, receiver)
        emulator = processes.start("emulator", [
            python, "-m", "emulator", "serve", "--host", "127.0.0.1", "--port", str(emulator_port),
            "--plan", "professional", "--deals", str(args.deals), "--contacts", str(args.deals // 2),
            "--companies", str(args.deals // 5), "--leads", str(args.deals // 2),
            "--activities", str(args.deals), "--items", str(args.deals // 10),
            "--app-handler-url", f"{receiver_url}/install"], env)
        wait_for(f"{emulator_url}/_emulator/health", 120, emulator)
        httpx.post(f"{emulator_url}/_emulator/portals/default/activity",
                   json={"rate_per_s": args.activity_per_s}, timeout=10).raise_for_status()
        dagster = processes.start("dagster", [
            python, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(ui_port)], env)
        wait_for(f"http://127.0.0.1:{ui_port}/server_info", 180, dagster)
        print(f"""
Bitrix24 -> DuckDB demo is running.
  Dagster UI        http://127.0.0.1:{ui_port}   (sensor offline_events_sensor is on)
  Bitrix24 portal   {emulator_url}   (emulator; {args.activity_per_s}/s simulated user changes)
  Warehouse         {state_dir / 'warehouse.duckdb'}  (analysts: open the .snapshot.duckdb beside it)
  Logs              {state_dir / 'logs'}
Ctrl-C stops everything.""", flush=True)
        while all(child.poll() is None for child in processes.children):
            time.sleep(1)
        print("a component exited; see the logs", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        processes.stop()


if __name__ == "__main__":
    main()
