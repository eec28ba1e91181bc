"""`python -m connectors.sync`: one pass of the CDC loop for one portal, without Dagster.

For cron-style deployments, debugging and the crash tests. The app's keys come from the
environment (B24_CLIENT_ID, B24_CLIENT_SECRET, B24_OAUTH_TOKEN_URL), never from the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from connectors.bitrix24 import Bitrix24Client, FileTokenStore, OAuthApp, RateLimits, TokenStore
from connectors.state import open_state_store
from connectors.sync.portal import DEFAULT_CONNECTOR, PortalSync
from connectors.sync.staging import default_staging_root, read_json, run_staging_dir
from connectors.sync.steps import RUN_MODES, run_rounds
from connectors.warehouse import open_warehouse


def token_store(args: argparse.Namespace) -> TokenStore:
    if args.tokens_dir:
        return FileTokenStore(Path(args.tokens_dir))
    return open_state_store(args.state_store or os.environ["B24_STATE_STORE"]).tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--portal", required=True, help="portal key (as stored at install)")
    parser.add_argument("--warehouse", required=True, help="DuckDB file or postgresql:// DSN")
    parser.add_argument("--schema", default="bitrix24", help="PostgreSQL schema")
    parser.add_argument("--mode", choices=[mode.value for mode in RUN_MODES], default="changes")
    parser.add_argument("--state-store", help="SQLite file or postgresql:// DSN (default $B24_STATE_STORE)")
    parser.add_argument("--tokens-dir", help="keep tokens in files here instead of a state store")
    parser.add_argument("--connector", default=DEFAULT_CONNECTOR)
    parser.add_argument("--max-events", type=int, default=25_000)
    parser.add_argument("--snapshot-every", type=float, default=0.0,
                        help="DuckDB: publish the analysts' snapshot after commits at most every N s")
    parser.add_argument("--staging-dir", type=Path, default=None,
                        help="root of the runs' hand-over files (default $B24_STAGING_DIR or "
                             "~/.local/state/b24wh/staging); owner-only")
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--drain-per-s", type=float, default=2.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    app = OAuthApp.from_environment()
    limits = RateLimits(burst=args.burst, drain_per_s=args.drain_per_s)
    staging = run_staging_dir(args.staging_dir or default_staging_root(), args.portal, uuid.uuid4().hex)
    try:
        with Bitrix24Client(app.session(args.portal, token_store(args)), limits=limits) as client, \
                open_warehouse(args.warehouse, schema=args.schema, publish_every=args.snapshot_every) as warehouse:
            sync = PortalSync(args.portal, client, warehouse, staging, connector=args.connector,
                              max_events=args.max_events)
            tables: dict[str, dict] = {}
            rounds = 0
            for done in run_rounds(sync, args.mode):
                rounds += 1
                for name, outcome in read_json(done.committed)["tables"].items():
                    total = tables.setdefault(name, {"table": outcome["table"]})
                    for key in ("rows_upserted", "rows_ignored_older", "tombstones", "events"):
                        total[key] = total.get(key, 0) + outcome[key]
            print(json.dumps({"tables": tables, "rounds": rounds, "usage": client.usage.snapshot()["http_requests"]}))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


if __name__ == "__main__":
    main()
