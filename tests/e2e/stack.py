"""The product as a user runs it, for end-to-end tests: receiver + `dagster dev` against an emulator.

The app is installed through the real flow: the emulator POSTs the install callback to our
receiver, which stores the portal and its tokens and binds the events; the sensor of a real
`dagster dev` (webserver + daemon) then bootstraps the portal and keeps it in sync.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import yaml
from dagster._core.instance.ref import InstanceRef

from connectors.receiver.app import portal_key
from emulator.testing import RunningEmulator
from emulator.world import DEFAULT_PORTAL
from pipelines.demo import REPO, Processes, demo_environment, free_port, wait_for
from pipelines.fleet import FAILED_TAG, PORTALS_TAG

ACTIVE = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
          dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


@dataclass
class Stack:
    emulator: RunningEmulator
    home: Path
    warehouse: str
    processes: Processes
    ui_port: int = 0
    keys: dict[str, str] = field(default_factory=dict)  # emulator portal name -> our portal key (partition)

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home / "dagster_home")))

    def runs(self, job: str | None = None, statuses: list[dg.DagsterRunStatus] | None = None) -> list[dg.DagsterRun]:
        with self.instance() as instance:
            return list(instance.get_runs(filters=dg.RunsFilter(job_name=job, statuses=statuses or [])))

    def loaded_portals(self) -> list[str]:
        """Portals a successful bootstrap run (``full_resync_portals``) loaded, less its failed part."""
        loaded: list[str] = []
        for run in self.runs("full_resync_portals", [dg.DagsterRunStatus.SUCCESS]):
            failed = set(run.tags.get(FAILED_TAG, "").split(","))
            loaded += [key for key in run.tags[PORTALS_TAG].split(",") if key not in failed]
        return loaded

    def wait_until(self, condition, timeout_s: float, what, poll_s: float = 2.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for child in self.processes.children:
                if child.poll() is not None:
                    raise AssertionError(f"{child.args} exited while waiting for {what}; logs in {self.home}/logs")
            if condition():
                return
            time.sleep(poll_s)
        described = what() if callable(what) else what  # a callable describes the state at the time-out
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {described}; logs in {self.home}/logs")

    def our_queue(self) -> list[dict]:
        return [row for row in self.emulator.queue() if row["APP_ID"] and row["ERROR"] in (0, "0")]

    def wait_until_drained(self, timeout_s: float = 240.0) -> None:
        """The queue is empty and no run is active, twice in a row (a run may be about to start)."""
        calm: list[bool] = []

        def drained() -> bool:
            calm.append(not self.our_queue() and not self.runs(statuses=ACTIVE))
            return calm[-2:] == [True, True]

        self.wait_until(drained, timeout_s, "the queue to drain")


@contextmanager
def running_stack(emulator: RunningEmulator, home: Path, warehouse: str, *,
                  extra_env: dict[str, str] | None = None, push: bool = True,
                  instance_settings: dict | None = None, code_location: str | None = None,
                  portals: Sequence[str] = (DEFAULT_PORTAL,)) -> Iterator[Stack]:
    """``instance_settings`` override top-level sections of the product's dagster.yaml;
    ``code_location`` (a module with ``defs``) replaces the workspace's ``pipelines.definitions``;
    ``portals``: the emulator portals (created beforehand) the app is installed on, in order."""
    (home / "dagster_home").mkdir(parents=True, exist_ok=True)
    (home / "logs").mkdir(exist_ok=True)
    settings = yaml.safe_load((REPO / "pipelines" / "dagster.yaml").read_text())
    settings.update(instance_settings or {})
    (home / "dagster_home" / "dagster.yaml").write_text(yaml.safe_dump(settings))
    env = {**demo_environment(home, emulator.url), "B24_WAREHOUSE": warehouse, **(extra_env or {})}
    env["B24_CLIENT_ID"], env["B24_CLIENT_SECRET"] = emulator.client_id, emulator.client_secret
    processes = Processes(home / "logs")
    receiver_port, ui_port = free_port(), free_port()
    receiver_url = f"http://127.0.0.1:{receiver_port}"
    try:
        receiver = processes.start("receiver", [
            sys.executable, "-m", "connectors.receiver", "--host", "127.0.0.1", "--port", str(receiver_port),
            "--public-url", receiver_url, "--min-timeout", "1", *([] if push else ["--no-push"])], env)
        wait_for(f"{receiver_url}/health", 60, receiver)
        emulator.register_app(emulator.client_id, emulator.client_secret, handler_url=f"{receiver_url}/install")
        keys = {name: portal_key(emulator.install(emulator.client_id, portal=name)["client_endpoint"])
                for name in portals}
        dagster = processes.start("dagster", [
            sys.executable, "-m", "dagster", "dev",
            *(["-m", code_location] if code_location else ["-w", "workspace.yaml"]),
            "-h", "127.0.0.1", "-p", str(ui_port)], env)
        wait_for(f"http://127.0.0.1:{ui_port}/server_info", 240, dagster)
        yield Stack(emulator, home, warehouse, processes, ui_port, keys)
    finally:
        processes.stop()
