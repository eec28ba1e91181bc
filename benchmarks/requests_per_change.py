"""HTTP requests per change: the connector's reserve -> fetch -> ack loop against two baselines.

The portal's 2 requests/s (burst 50) is the bottleneck (DESIGN §5), so requests per change is the
first figure of merit. For a backlog of 10,000 and of 100,000 changed deals, contacts and companies
(4:3:3), on one emulator per backlog with standard-plan limits on (50/2; plan "professional" for
the clear=0 reservations), this prints:

- connector: requests counted by the emulator, wall time, and CPU seconds turning records into
  frames; the loop is ``reserve(10,000 rows) -> plan -> fetch_changes -> to_frame -> ack`` until the
  queue is empty;
- bound: 3 requests per 2,500 changes (DESIGN §5);
- baseline "one get per id": the same reserve/ack, but each object re-read with its own ``*.get``;
- baseline "50 gets per batch": the same, with 50 ``*.get`` packed into each ``batch``.

Baselines at 2 requests/s would take hours, so they are measured on a sample (each with a drained
bucket first) and extrapolated: requests exactly, wall time as ``requests × measured service time +
paced wait of the leaky bucket``. The output says which figures are extrapolated.
Last line: ``requests_per_10k_changes=<n>``.

Run: ``.venv/bin/python benchmarks/requests_per_change.py [--backlogs 10000 100000]``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from connectors.bitrix24 import (
    Bitrix24Client,
    Command,
    EntityRegistry,
    FileTokenStore,
    OAuthApp,
    OfflineQueue,
    RateLimits,
    fetch_changes,
    plan_changes,
    table_schema,
    to_frame,
)
from emulator.testing import ThreadEmulator, run_emulator

CONNECTOR = "warehouse"
SHARES = {"deal": 0.4, "contact": 0.3, "company": 0.3}
STEP_ROWS = 10_000
LIMITS = RateLimits.standard()
PER_ID_SAMPLE = 100  # single *.get requests measured
BATCHED_SAMPLE = 60  # batches of 50 *.get measured


def make_client(emu: ThreadEmulator, tokens: Path) -> Bitrix24Client:
    store = FileTokenStore(tokens)
    if store.load("default") is None:
        store.save("default", emu.install_tokens())
    app = OAuthApp(emu.client_id, emu.client_secret, token_url=f"{emu.url}/oauth/token/")
    return Bitrix24Client(app.session("default", store), limits=LIMITS)


def change_backlog(emu: ThreadEmulator, counts: dict[str, int]) -> None:
    """Every seeded record updated once by a UI user, written in-process (no HTTP)."""
    from emulator.events import Origin

    portal = emu.world.portals["default"]
    origin = Origin(user_id=2)
    with portal.lock:
        for entity, count in counts.items():
            for entity_id in range(1, count + 1):
                portal.crm.write(entity, "update", entity_id, {"COMMENTS": "changed"}, origin)


def wait_for_empty_bucket() -> None:
    time.sleep(LIMITS.burst / LIMITS.drain_per_s + 1)


def run_connector(emu: ThreadEmulator, client: Bitrix24Client, registry: EntityRegistry) -> dict:
    schemas = {kind.key: table_schema(client, kind) for kind in registry}
    queue = OfflineQueue(client, CONNECTOR)
    queue.features()
    wait_for_empty_bucket()
    emu.reset_stats()
    started = time.perf_counter()
    changes = frame_s = 0.0
    while True:
        reserved = queue.reserve(max_rows=STEP_ROWS)
        if not reserved.events:
            break
        plan = plan_changes(reserved.events, registry)
        fetched = fetch_changes(client, plan)
        converting = time.process_time()
        for key, result in fetched.items():
            to_frame(registry[key], schemas[key], result.records)
        frame_s += time.process_time() - converting
        queue.ack(reserved.process_ids)
        changes += plan.fetch_count + plan.tombstone_count
    wall = time.perf_counter() - started
    stats = emu.stats()
    return {"changes": int(changes), "requests": stats["http_requests"], "wall_s": wall, "frame_cpu_s": frame_s,
            "status_503": stats["status"].get("503", 0)}


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


def backlog_run(total: int, tokens: Path) -> dict:
    counts = {entity: round(total * share) for entity, share in SHARES.items()}
    seed = {**counts, "lead": 0, "activity": 0, "item": 0}
    with run_emulator(limits=True, plan="professional", counts=seed, seed=7) as emu:
        client = make_client(emu, tokens)
        registry = EntityRegistry.standard().subset(SHARES)
        OfflineQueue(client, CONNECTOR).bind(registry)
        change_backlog(emu, counts)
        connector = run_connector(emu, client, registry)
        per_id = measure_get_requests(emu, client, 1, PER_ID_SAMPLE)
        batched = measure_get_requests(emu, client, 50, BATCHED_SAMPLE)
        client.close()
    reserve_and_ack = 2 * math.ceil(total / 2_500)
    baselines = {}
    for name, sample, per_request in (("one get per id", per_id, 1), ("50 gets per batch", batched, 50)):
        requests = reserve_and_ack + math.ceil(total / per_request)
        baselines[name] = {"requests": requests, "wall_s": paced_wall(requests, sample["service_s"]),
                           "sample_requests": sample["requests"]}
    return {"total": total, "connector": connector, "bound": 3 * math.ceil(total / 2_500), "baselines": baselines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backlogs", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for index, total in enumerate(args.backlogs):
            rows.append(backlog_run(total, Path(scratch) / f"tokens{index}"))

    print(f"limits: burst {LIMITS.burst}, {LIMITS.drain_per_s:g} requests/s (standard plan); "
          f"connector steps of {STEP_ROWS:,} rows")
    print(f"{'backlog':>9} | {'who':<24} | {'requests':>9} | {'wall s':>9} | {'req/10k':>8} | note")
    print("-" * 92)
    for row in rows:
        total, connector = row["total"], row["connector"]
        per_10k = connector["requests"] * 10_000 / total
        print(f"{total:>9,} | {'connector':<24} | {connector['requests']:>9,} | {connector['wall_s']:>9.1f} | "
              f"{per_10k:>8.1f} | measured; 503s: {connector['status_503']}; frames: "
              f"{connector['frame_cpu_s']:.2f} CPU s for {connector['changes']:,} changes")
        print(f"{'':>9} | {'bound (3 per 2,500)':<24} | {row['bound']:>9,} | {'':>9} | "
              f"{row['bound'] * 10_000 / total:>8.1f} | DESIGN §5")
        for name, baseline in row["baselines"].items():
            print(f"{'':>9} | {name:<24} | {baseline['requests']:>9,} | {baseline['wall_s']:>9.1f} | "
                  f"{baseline['requests'] * 10_000 / total:>8.1f} | extrapolated from "
                  f"{baseline['sample_requests']} measured requests (+ reserve/ack as above)")
    ten_k = next((row for row in rows if row["total"] == 10_000), rows[0])
    print(f"requests_per_10k_changes={round(ten_k['connector']['requests'] * 10_000 / ten_k['total'])}")


if __name__ == "__main__":
    main()
