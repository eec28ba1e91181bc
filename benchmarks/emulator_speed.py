"""How fast the emulator serves what the connector asks most: 2,500 deals per `batch`.

Starts ``python -m emulator serve`` in a child process with 100,000 deals and limits off, then times
with plain httpx (keep-alive, one client):

- start-up: process start to "listening", once empty and once with the seed (the difference is seeding);
- fetch batch: 50 × ``crm.deal.list`` with an ``@ID`` filter of 50 ids each → 2,500 deals;
- keyset-scan batch: 50 × ``crm.deal.list`` ``order ID ASC``, ``filter[>ID]`` chained with
  ``$result[prev][49][ID]``, ``start=-1`` → 2,500 deals.

Prints a small table and, last, ``batch_2500_deals_p50_ms=<n>``.
Run: ``.venv/bin/python benchmarks/emulator_speed.py [--deals 100000] [--runs 30]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import httpx

from emulator.params import encode_query
from emulator.testing import run_emulator_process

EMPTY = {"deals": 0, "contacts": 0, "companies": 0, "leads": 0, "activities": 0, "items": 0}


def _percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _fetch_batch(rng: random.Random, deals: int) -> dict:
    cmd = {}
    for index in range(50):
        ids = rng.sample(range(1, deals + 1), 50)
        cmd[f"f{index}"] = "crm.deal.list?" + encode_query({"filter": {"@ID": ids}, "start": -1})
    return {"cmd": cmd}


def _scan_batch(rng: random.Random, deals: int) -> dict:
    after = rng.randrange(0, max(1, deals - 2_600))
    cmd = {}
    for index in range(50):
        cursor = after if index == 0 else f"$result[s{index - 1}][49][ID]"
        cmd[f"s{index}"] = "crm.deal.list?" + encode_query(
            {"order": {"ID": "ASC"}, "filter": {">ID": cursor}, "start": -1})
    return {"cmd": cmd}


def _time_batches(client: httpx.Client, url: str, make: Callable[[], dict], runs: int) -> tuple[list[float], int]:
    samples, rows = [], 0
    for _ in range(runs + 2):  # two warm-up runs are discarded
        body = make()
        started = time.perf_counter()
        response = client.post(url, json=body)
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        result = response.json()["result"]
        if result["result_error"]:
            raise RuntimeError(f"sub-calls failed: {result['result_error']}")
        rows = sum(len(page) for page in result["result"].values())
        samples.append(elapsed * 1000)
    return samples[2:], rows


def _startup_seconds(**options: int) -> float:
    started = time.perf_counter()
    with run_emulator_process(limits=False, **options):
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    rng = random.Random(7)

    empty_s = _startup_seconds(**EMPTY)
    started = time.perf_counter()
    with run_emulator_process(limits=False, **{**EMPTY, "deals": args.deals}) as emu, \
            httpx.Client(timeout=120) as client:
        seeded_s = time.perf_counter() - started
        url = emu.webhook_url + "batch"
        fetch, fetch_rows = _time_batches(client, url, lambda: _fetch_batch(rng, args.deals), args.runs)
        scan, scan_rows = _time_batches(client, url, lambda: _scan_batch(rng, args.deals), args.runs)

    print(f"emulator speed: {args.deals:,} deals, limits off, {args.runs} runs per batch, plain httpx")
    print(f"{'measure':<44}{'p50':>10}{'p95':>10}{'rows':>8}")
    for name, samples, rows in (("fetch batch: 50 x crm.deal.list @ID[50] (ms)", fetch, fetch_rows),
                                ("keyset-scan batch: 50 chained $result (ms)", scan, scan_rows)):
        print(f"{name:<44}{statistics.median(samples):>10.1f}{_percentile(samples, 0.95):>10.1f}{rows:>8}")
    print(f"{'start-up, empty portal (s)':<44}{empty_s:>10.2f}")
    print(f"{f'start-up with {args.deals:,} deals (s)':<44}{seeded_s:>10.2f}")
    print(f"{'seeding (difference, s)':<44}{seeded_s - empty_s:>10.2f}")
    print(f"batch_2500_deals_p50_ms={statistics.median(fetch):.1f}")


if __name__ == "__main__":
    main()
