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

from connectors.bitrix24 import Bitrix24Client, FileTokenStore, OAuthApp, RateLimits
from connectors.state import StateStore, open_state_store
from connectors.sync.portal import DEFAULT_CONNECTOR, PortalSync, portal_client
from connectors.sync.staging import default_staging_root, read_json, run_staging_dir
from connectors.sync.steps import RUN_MODES, run_rounds
from connectors.warehouse import open_warehouse


def open_client(args: argparse.Namespace, app: OAuthApp, limits: RateLimits,
                state: StateStore | None) -> Bitrix24Client:
    """With a state store, as a Dagster run: its tokens, and the portal's one request bucket shared
    with every other process of the deployment (facts §6.1). With ``--tokens-dir``, tokens in files
    and a bucket of this process's own."""
    if state is None:
        return Bitrix24Client(app.session(args.portal, FileTokenStore(Path(args.tokens_dir))), limits=limits)
    return portal_client(app, state, args.portal, limits)


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

    try:
        app = OAuthApp.from_environment()
    except ValueError as error:
        parser.error(str(error))
    if not (args.tokens_dir or args.state_store or os.environ.get("B24_STATE_STORE")):
        parser.error("say where the portal's tokens are: --state-store (or $B24_STATE_STORE), as the receiver "
                     "stored them at install, or --tokens-dir")
    limits = RateLimits(burst=args.burst, drain_per_s=args.drain_per_s)
    staging = run_staging_dir(args.staging_dir or default_staging_root(), args.portal, uuid.uuid4().hex)
    # Look-ups (fields, types, plan) are cached in the state store between runs, as Dagster runs do.
    state = None if args.tokens_dir else open_state_store(args.state_store or os.environ["B24_STATE_STORE"])
    try:
        with open_client(args, app, limits, state) as client, \
                open_warehouse(args.warehouse, schema=args.schema, publish_every=args.snapshot_every) as warehouse:
            sync = PortalSync(args.portal, client, warehouse, staging, connector=args.connector,
                              max_events=args.max_events, state=state)
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
        if state is not None:
            state.close()


if __name__ == "__main__":
    main()
