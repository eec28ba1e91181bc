"""Screenshots of the Dagster UI as operators see it, taken with headless Chromium (Debian's package).

Starts the demo (`python -m pipelines.demo` in a scratch state directory: emulator, receiver,
`dagster dev` with the sensor on), waits until the portal's full resync and a few syncs have landed and
the health checks have run, then saves under ``docs/``:

* ``asset-graph.png``    the ``bitrix24`` group: the queue feeding the sync graph's assets;
* ``entity-asset.png``   the deals asset: its materializations and their metadata;
* ``checks.png``         the watermark's checks (fleet currency, journal health) and freshness.

It also reads every run's event log and fails if any carries a preview or beta warning.

    .venv/bin/python scripts/ui_screenshots.py [--out docs] [--chromium /usr/bin/chromium]

Needs ``apt-get install chromium``. Exit status 1 when a page could not be taken or a warning was seen.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import httpx
from dagster_graphql import DagsterGraphQLClient

REPO = Path(__file__).resolve().parents[1]
LOCATION = "__repository__@pipelines.definitions"
PAGES = {
    "asset-graph.png": f"/locations/{LOCATION}/asset-groups/bitrix24",
    "entity-asset.png": "/assets/bitrix24/deals",
    "checks.png": "/assets/bitrix24/sync_watermark?view=checks",
}
WARNINGS = re.compile(r"PreviewWarning|BetaWarning|ExperimentalWarning")


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(2)
    raise TimeoutError(f"gave up waiting for {what} after {timeout_s:.0f} s")


def screenshot(chromium: str, url: str, target: Path) -> None:
    """One page rendered by headless Chromium at 1800x1100; the virtual-time budget lets the UI's
    GraphQL queries finish before the picture is taken."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", "--window-size=1800,1100",
                        "--virtual-time-budget=20000", f"--screenshot={target}", url],
                       check=True, capture_output=True, timeout=120)
    if not target.exists() or target.stat().st_size < 10_000:
        raise RuntimeError(f"{url}: no usable screenshot")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--ui-port", type=int, default=3300)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="b24wh-shots-") as scratch:
        state_dir = Path(scratch)
        log = (state_dir / "demo.log").open("w")
        demo = subprocess.Popen([sys.executable, "-m", "pipelines.demo", "--state-dir", str(state_dir),
                                 "--ui-port", str(args.ui_port), "--deals", "1000", "--activity-per-s", "1"],
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            ui = f"http://127.0.0.1:{args.ui_port}"
            wait_until(lambda: _answers(f"{ui}/server_info"), 300, "the Dagster UI")
            os.environ["DAGSTER_HOME"] = str(state_dir / "dagster_home")
            with dg.DagsterInstance.get() as instance:
                def synced() -> bool:
                    runs = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))
                    return sum(run.job_name == "sync_portals" for run in runs) >= 3 and any(
                        run.job_name == "full_resync_portals" for run in runs)

                wait_until(synced, 600, "the full resync and three syncs")
                # The UI greets a new instance with a newsletter dialog over every page; mark it seen.
                httpx.post(f"{ui}/graphql", json={"query": "mutation { setNuxSeen }"}, timeout=30).raise_for_status()
                client = DagsterGraphQLClient("127.0.0.1", port_number=args.ui_port)
                run_id = client.submit_job_execution("health_checks")
                wait_until(lambda: client.get_run_status(run_id) is dg.DagsterRunStatus.SUCCESS, 180,
                           "the health checks")
                for name, path in PAGES.items():
                    screenshot(args.chromium, ui + path, args.out / name)
                    print(f"saved {args.out / name}")
                warned = [run.run_id for run in instance.get_runs()
                          if any(WARNINGS.search(entry.message or "") for entry in instance.all_logs(run.run_id))]
            daemon_logs = "".join(path.read_text(errors="replace") for path in (state_dir / "logs").glob("*.log"))
            if warned or WARNINGS.search(daemon_logs):
                print(f"preview/beta warnings in runs {warned} or in the component logs", file=sys.stderr)
                return 1
            print("no preview or beta warnings in any run's log or the component logs")
            return 0
        finally:
            os.killpg(demo.pid, 2)
            demo.wait(timeout=60)
            log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    sys.exit(main())
