"""How fast many new portals are loaded when their full resyncs are grouped: ``full_resync_portals`` runs of
``--per-run`` portals (``--workers`` at a time inside a run), executed one after another in this process.

P emulator portals (20 deals and 10 contacts each, plan professional, standard limits on) are installed
and saved in the state store; a fresh PostgreSQL database holds the state store and the warehouse
(schema ``warehouse``). Runs execute in process (`execute_in_process`), so a deployment adds each
run's process start (seconds) on top; `benchmarks/scale.py` measures the product under `dagster dev`.

    python benchmarks/fleet_bootstrap.py [--portals 100] [--per-run 25] [--workers 4]

Last line: ``grouped_bootstrap_portals_per_min_<P>=<n>``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import dagster as dg
import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emulator.testing import run_emulator_process  # noqa: E402
from pipelines.definitions import build_definitions  # noqa: E402
from pipelines.fleet import FleetSyncConfig  # noqa: E402
from pipelines.partitions import portals  # noqa: E402
from tests.pipelines.conftest import install_portals, resources_for  # noqa: E402

PG_SERVER = os.environ.get("B24_SCALE_PG_SERVER", "postgresql://postgres@127.0.0.1:5432")
SEED_COUNTS = {"deal": 20, "contact": 10, "company": 0, "lead": 0, "activity": 0, "item": 0}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--portals", type=int, default=100)
    parser.add_argument("--per-run", type=int, default=25)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    database = f"fleet_bootstrap_{os.getpid()}"
    admin = f"{PG_SERVER}/postgres"
    with psycopg.connect(admin, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{database}"')
    dsn = f"{PG_SERVER}/{database}"
    try:
        with run_emulator_process(counts=SEED_COUNTS, smart_process_types=0, seed=1, limits=True,
                                  plan="professional") as emu, dg.instance_for_test() as instance:
            began = time.monotonic()
            keys = list(install_portals(emu, dsn, [f"p{n:04d}" for n in range(args.portals)], SEED_COUNTS).values())
            print(f"installed {args.portals} portals in {time.monotonic() - began:.0f} s", flush=True)
            job = build_definitions(resources_for(emu, dsn, f"{dsn}?schema=warehouse")).resolve_job_def(
                "full_resync_portals")
            instance.add_dynamic_partitions(portals.name, keys)
            failed: list[str] = []
            began = time.monotonic()
            for start in range(0, len(keys), args.per_run):
                result = job.execute_in_process(instance=instance, run_config=dg.RunConfig(ops={
                    "full_resync_portal_group": FleetSyncConfig(portals=keys[start:start + args.per_run],
                                                                workers=args.workers)}))
                failed += result.output_for_node("full_resync_portal_group")["failed"]
            seconds = time.monotonic() - began
            with psycopg.connect(dsn) as con:
                loaded, rows = con.execute("select count(distinct portal), count(*) from warehouse.deals").fetchone()
        runs = math.ceil(len(keys) / args.per_run)
        print(f"{args.portals} portals in {runs} full_resync_portals runs of {args.per_run}: {seconds:.0f} s "
              f"({args.portals / seconds * 60:.1f} portals/min); failed portals {failed}; deals loaded for "
              f"{loaded} portals ({rows} rows); 1-min load average after {os.getloadavg()[0]:.1f}")
        print(f"grouped_bootstrap_portals_per_min_{args.portals}={args.portals / seconds * 60:.1f}")
    finally:
        with psycopg.connect(admin, autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


if __name__ == "__main__":
    main()
