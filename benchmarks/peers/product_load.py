"""This product as a contender in `benchmarks/side_by_side.py`: one sync run (``run_once``).

A script of its own, like the peers' (`fast_bitrix24_load.py`, `dlt_load.py`), so the process
measured holds the product and nothing of the harness (the emulator's client, ground-truth checks):
its peak RSS is the run's. Runs in the product's venv. As deployed by default: tokens, the portal's
request bucket and the look-up cache in a SQLite state store; a DuckDB warehouse. Prints one JSON
line: rows upserted, CPU seconds, wall seconds, peak RSS (MB).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the product's packages

from own_peak import peak_rss_mb  # this directory

from connectors.bitrix24 import OAuthApp, RateLimits
from connectors.state import open_state_store
from connectors.sync.portal import PortalSync, portal_client
from connectors.sync.steps import run_once
from connectors.warehouse import open_warehouse

PORTAL = "default"


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("mode", "token-url", "client-id", "client-secret", "state-store", "warehouse", "staging"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--limits", choices=("standard", "none"), required=True)
    args = parser.parse_args()
    app = OAuthApp(args.client_id, args.client_secret, token_url=args.token_url)
    # "none": a bucket the run never fills, so the client never waits (the emulator refuses nothing).
    limits = RateLimits.standard() if args.limits == "standard" else RateLimits(burst=10**9, drain_per_s=1e9)
    cpu, wall = time.process_time(), time.perf_counter()
    with open_state_store(args.state_store) as state, \
            portal_client(app, state, PORTAL, limits) as client, \
            open_warehouse(Path(args.warehouse)) as warehouse:
        sync = PortalSync(PORTAL, client, warehouse, Path(args.staging), state=state)
        committed = json.loads(Path(run_once(sync, args.mode)).read_text())
    rows = sum(table["rows_upserted"] for table in committed["tables"].values())
    print(json.dumps({"rows": rows, "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
                      "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
