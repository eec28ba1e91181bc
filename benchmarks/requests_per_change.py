"""HTTP requests per change, driven through `connectors.sync.steps` as a Dagster run drives it.

The portal's 2 requests/s (burst 50) is the bottleneck (DESIGN §5), so requests per change is the
first figure of merit. On one emulator per backlog with standard-plan limits on (50/2; plan
"professional" for the clear=0 reservations), the connector runs exactly as in production: a
`PortalSync` over a SQLite state store (the portal cache lives there) and a DuckDB warehouse, each
run `reserve -> fetch -> commit -> ack` (`steps.run_once`), every step with its own client as the
Dagster ops have. It prints:

- full load: the bootstrap run (`full_resync`) of the seeded portal, against ceil(N / 2,500) + 2;
- small run: a steady-state run of a few changes over three kinds (the demo's typical run);
- connector: a backlog of changed deals, contacts and companies (4:3:3) drained by runs of the
  default size, against the bound of 3 requests per 2,500 changes (DESIGN §5);
- baseline "one get per id": the same reserve/ack, but each object re-read with its own ``*.get``;
- baseline "50 gets per batch": the same, with 50 ``*.get`` packed into each ``batch``.

Baselines at 2 requests/s would take hours, so they are measured on a sample (each with a drained
bucket first) and extrapolated: requests exactly, wall time as ``requests × measured service time +
paced wait of the leaky bucket``. The output says which figures are extrapolated.
Last lines: ``requests_per_10k_changes=<n>`` and ``requests_per_small_run=<n>``.

Run: ``.venv/bin/python benchmarks/requests_per_change.py [--backlogs 10000 100000]``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import uuid
from pathlib import Path

from connectors.bitrix24 import (
    Bitrix24Client,
    Command,
    FileTokenStore,
    OAuthApp,
    RateLimits,
)
from connectors.state import open_state_store
from connectors.sync.portal import PortalSync
from connectors.sync.staging import Committed, Fetched, SyncMode
from connectors.sync.steps import ack, commit, fetch, reserve
from connectors.warehouse import open_warehouse
from emulator.testing import ThreadEmulator, run_emulator

PORTAL = "default"
SHARES = {"deal": 0.4, "contact": 0.3, "company": 0.3}
SMALL_RUN = {"deal": 5, "contact": 4, "company": 4}  # 13 objects, as in the demo's typical run
LIMITS = RateLimits.standard()
PER_ID_SAMPLE = 100  # single *.get requests measured
BATCHED_SAMPLE = 60  # batches of 50 *.get measured


def make_client(emu: ThreadEmulator, tokens: Path) -> Bitrix24Client:
    store = FileTokenStore(tokens)
    if store.load(PORTAL) is None:
        store.save(PORTAL, emu.install_tokens())
    app = OAuthApp(emu.client_id, emu.client_secret, token_url=f"{emu.url}/oauth/token/")
    return Bitrix24Client(app.session(PORTAL, store), limits=LIMITS)


def change_objects(emu: ThreadEmulator, counts: dict[str, int]) -> None:
    """Every seeded record up to ``counts`` updated once by a UI user, written in-process (no HTTP)."""
    from emulator.events import Origin

    portal = emu.world.portals[PORTAL]
    origin = Origin(user_id=2)
    with portal.lock:
        for entity, count in counts.items():
            for entity_id in range(1, count + 1):
                portal.crm.write(entity, "update", entity_id, {"COMMENTS": f"changed {time.time()}"}, origin)


def wait_for_empty_bucket() -> None:
    time.sleep(LIMITS.burst / LIMITS.drain_per_s + 1)


class Connector:
    """The product's run, step by step, each step with its own client (as each Dagster op has)."""

    def __init__(self, emu: ThreadEmulator, scratch: Path) -> None:
        self.emu, self.scratch = emu, scratch
        self.state = open_state_store(str(scratch / "state.sqlite"))
        self.warehouse = str(scratch / "warehouse.duckdb")
        self.tokens = scratch / "tokens"

    def run(self, mode: SyncMode) -> dict:
        """One run; returns its requests (counted by the emulator), wall time and numbers."""
        run_dir = self.scratch / "staging" / uuid.uuid4().hex
        self.emu.reset_stats()
        started = time.perf_counter()
        manifest = None
        for step in (reserve, fetch, commit, ack):
            with make_client(self.emu, self.tokens) as client, open_warehouse(self.warehouse) as warehouse:
                sync = PortalSync(PORTAL, client, warehouse, run_dir, state=self.state)
                manifest = step(sync, mode if step is reserve else manifest)
        wall = time.perf_counter() - started
        stats = self.emu.stats()
        committed = Committed.read(run_dir / "committed.json")
        fetched = Fetched.read(committed.fetched_file)
        return {"requests": stats["http_requests"], "wall_s": wall, "status_503": stats["status"].get("503", 0),
                "events": fetched.reserved.event_count,
                "rows": sum(t.rows_upserted + t.tombstones for t in committed.tables.values()),
                "methods": {name: m["calls"] for name, m in stats["methods"].items()}}

    def drain(self) -> dict:
        """Runs of the default size until the queue is empty (the sensor starts the next while the
        last one filled up); requests summed over the runs."""
        total = {"requests": 0, "wall_s": 0.0, "status_503": 0, "events": 0, "rows": 0, "runs": 0}
        while True:
            outcome = self.run(SyncMode.CHANGES)
            for key in ("requests", "wall_s", "status_503", "events", "rows"):
                total[key] += outcome[key]
            total["runs"] += 1
            if outcome["events"] < PortalSync.max_events:
                return total

    def close(self) -> None:
        self.state.close()


def measure_get_requests(emu: ThreadEmulator, client: Bitrix24Client, per_request: int, requests: int) -> dict:
    """``requests`` HTTP calls re-reading deals with ``*.get``, ``per_request`` of them per call."""
    wait_for_empty_bucket()
    emu.reset_stats()
    waited_before = client.throttle.waited_s
    ids = iter(range(1, per_request * requests + 1))
    started = time.perf_counter()
    for _ in range(requests):
        group = [next(ids) for _ in range(per_request)]
        if per_request == 1:
            client.call("crm.deal.get", {"id": group[0]})
        else:
            client.batch({f"g{i}": Command("crm.deal.get", {"id": i}) for i in group})
    wall = time.perf_counter() - started
    waited = client.throttle.waited_s - waited_before
    sent = emu.stats()["http_requests"]
    return {"requests": sent, "service_s": (wall - waited) / sent}


def paced_wall(requests: int, service_s: float) -> float:
    """Wall time of ``requests`` back-to-back calls through a 50/2 leaky bucket."""
    return requests * service_s + max(0, requests - LIMITS.capacity) / LIMITS.drain_per_s


def backlog_run(total: int, scratch: Path) -> dict:
    counts = {entity: round(total * share) for entity, share in SHARES.items()}
    seed = {**counts, "lead": 0, "activity": 0, "item": 0}
    with run_emulator(limits=True, plan="professional", counts=seed, seed=7) as emu:
        connector = Connector(emu, scratch)
        wait_for_empty_bucket()
        full_load = connector.run(SyncMode.FULL_RESYNC)
        change_objects(emu, SMALL_RUN)
        wait_for_empty_bucket()
        small = connector.run(SyncMode.CHANGES)
        change_objects(emu, counts)
        wait_for_empty_bucket()
        drained = connector.drain()
        connector.close()
        with make_client(emu, scratch / "tokens") as client:
            per_id = measure_get_requests(emu, client, 1, PER_ID_SAMPLE)
            batched = measure_get_requests(emu, client, 50, BATCHED_SAMPLE)
    reserve_and_ack = 2 * math.ceil(total / 2_500)
    baselines = {}
    for name, sample, per_request in (("one get per id", per_id, 1), ("50 gets per batch", batched, 50)):
        requests = reserve_and_ack + math.ceil(total / per_request)
        baselines[name] = {"requests": requests, "wall_s": paced_wall(requests, sample["service_s"]),
                           "sample_requests": sample["requests"]}
    return {"total": total, "full_load": full_load, "small": small, "connector": drained,
            "bound": 3 * math.ceil(total / 2_500), "baselines": baselines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backlogs", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    rows = []
    for total in args.backlogs:
        with tempfile.TemporaryDirectory() as scratch:
            rows.append(backlog_run(total, Path(scratch)))

    print(f"limits: burst {LIMITS.burst}, {LIMITS.drain_per_s:g} requests/s (standard plan); runs of up to "
          f"{PortalSync.max_events:,} changes through connectors.sync.steps, one client per step")
    print(f"{'backlog':>9} | {'who':<24} | {'requests':>9} | {'wall s':>9} | {'req/10k':>8} | note")
    print("-" * 92)
    for row in rows:
        total, connector, full, small = row["total"], row["connector"], row["full_load"], row["small"]
        print(f"{total:>9,} | {'full load (bootstrap)':<24} | {full['requests']:>9,} | {full['wall_s']:>9.1f} | "
              f"{'':>8} | {full['rows']:,} rows; bound ceil(N/2,500)+2 = {math.ceil(total / 2_500) + 2}; "
              f"503s: {full['status_503']}")
        print(f"{'':>9} | {'small run':<24} | {small['requests']:>9,} | {small['wall_s']:>9.1f} | {'':>8} | "
              f"{small['events']} queue rows; {small['methods']}")
        per_10k = connector["requests"] * 10_000 / total
        print(f"{'':>9} | {'connector':<24} | {connector['requests']:>9,} | {connector['wall_s']:>9.1f} | "
              f"{per_10k:>8.1f} | measured, {connector['runs']} runs; 503s: {connector['status_503']}; "
              f"{connector['events']:,} queue rows")
        print(f"{'':>9} | {'bound (3 per 2,500)':<24} | {row['bound']:>9,} | {'':>9} | "
              f"{row['bound'] * 10_000 / total:>8.1f} | DESIGN §5")
        for name, baseline in row["baselines"].items():
            print(f"{'':>9} | {name:<24} | {baseline['requests']:>9,} | {baseline['wall_s']:>9.1f} | "
                  f"{baseline['requests'] * 10_000 / total:>8.1f} | extrapolated from "
                  f"{baseline['sample_requests']} measured requests (+ reserve/ack as above)")
    ten_k = next((row for row in rows if row["total"] == 10_000), rows[0])
    print(f"requests_per_10k_changes={round(ten_k['connector']['requests'] * 10_000 / ten_k['total'])}")
    print(f"requests_per_small_run={ten_k['small']['requests']}")


if __name__ == "__main__":
    main()
