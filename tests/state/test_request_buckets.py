"""Request buckets in the state store: one leaky bucket per portal (facts §6.1), shared by every
process that calls the portal, each update atomic and confined to that portal's row."""

from __future__ import annotations

import multiprocessing
import time
import uuid

import psycopg
import pytest

from connectors.state import InvalidPortalKey, StateStore
from tests.state.conftest import PG_DSN, StoreTarget

# Draining so slowly that a test's few seconds drain nothing measurable: levels count requests.
NO_DRAIN = 1e-9
# One slot per 100 s: waits are whole multiples of 100 s, give or take what a slow machine's
# seconds between two calls drain (0.01 slot per second).
SLOW = 0.01


def test_reservations_wait_once_the_bucket_is_full(store: StateStore) -> None:
    waits = [store.reserve_request("a.bitrix24.de", capacity=3, drain_per_s=SLOW) for _ in range(5)]

    assert waits[:3] == [0.0, 0.0, 0.0]
    # The 4th and 5th requests may go when the bucket has drained one and two slots.
    assert waits[3] == pytest.approx(100.0, abs=5.0)
    assert waits[4] == pytest.approx(200.0, abs=5.0)


def test_the_bucket_drains_with_time(store: StateStore) -> None:
    for _ in range(3):
        store.reserve_request("a.bitrix24.de", capacity=3, drain_per_s=10.0)
    time.sleep(0.3)  # drains 3 slots

    assert store.reserve_request("a.bitrix24.de", capacity=3, drain_per_s=10.0) == 0.0


def test_portals_have_separate_buckets(store: StateStore) -> None:
    for _ in range(10):
        store.reserve_request("busy.bitrix24.de", capacity=3, drain_per_s=NO_DRAIN)

    assert store.reserve_request("quiet.bitrix24.de", capacity=3, drain_per_s=NO_DRAIN) == 0.0


def test_a_503_fills_the_bucket(store: StateStore) -> None:
    store.reserve_request("a.bitrix24.de", capacity=10, drain_per_s=SLOW)
    store.saturate_requests("a.bitrix24.de", capacity=10, drain_per_s=SLOW)

    # Full at 10: the next slot is one drain step away.
    assert store.reserve_request("a.bitrix24.de", capacity=10, drain_per_s=SLOW) == pytest.approx(100.0, abs=5.0)


def test_a_503_on_an_unknown_portal_starts_it_full(store: StateStore) -> None:
    store.saturate_requests("new.bitrix24.de", capacity=4, drain_per_s=SLOW)

    assert store.reserve_request("new.bitrix24.de", capacity=4, drain_per_s=SLOW) == pytest.approx(100.0, abs=5.0)


def test_bad_keys_and_drains_are_refused(store: StateStore) -> None:
    with pytest.raises(InvalidPortalKey):
        store.reserve_request("not a portal", capacity=3, drain_per_s=2.0)
    with pytest.raises(ValueError, match="drain_per_s"):
        store.reserve_request("a.bitrix24.de", capacity=3, drain_per_s=0)


def _reserve(target: StoreTarget, count: int, results: multiprocessing.Queue) -> None:
    store = target.open()
    waits = [store.reserve_request("shared.bitrix24.de", capacity=0, drain_per_s=NO_DRAIN) for _ in range(count)]
    store.close()
    results.put(waits)


def test_processes_reserving_at_once_never_get_the_same_slot(store_target: StoreTarget) -> None:
    """With capacity 0 and no drain, a reservation's wait is its position in the queue over the
    drain rate: a lost update would show up as two equal waits."""
    store_target.open()  # creates the tables before the race
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_reserve, args=(store_target, 40, results)) for _ in range(4)]
    for process in workers:
        process.start()
    waits = [wait for _ in workers for wait in results.get(timeout=120)]
    for process in workers:
        process.join(60)

    positions = sorted(round(wait * NO_DRAIN) for wait in waits)
    assert positions == list(range(1, 161))


@pytest.mark.postgres
def test_a_bucket_connection_the_server_dropped_is_replaced() -> None:
    """PostgreSQL keeps a few idle connections for bucket updates (SQLite opens its file per call)."""
    store_target = StoreTarget("postgres", PG_DSN, f"state_test_{uuid.uuid4().hex[:12]}")
    store = store_target.open()
    store.reserve_request("a.bitrix24.de", capacity=5, drain_per_s=NO_DRAIN)
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        # What a server restart or an idle timeout does to the store's pooled connection.
        dropped = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE pid <> pg_backend_pid() AND application_name = '' "
                                "AND query LIKE %s", [f'%"{store_target.schema}"."request_buckets"%']).fetchall()
    assert dropped == [(True,)]

    assert store.reserve_request("a.bitrix24.de", capacity=5, drain_per_s=NO_DRAIN) == 0.0
    assert store.reserve_request("a.bitrix24.de", capacity=2, drain_per_s=NO_DRAIN) > 0  # third slot, counted
    store.close()
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        admin.execute(f'DROP SCHEMA "{store_target.schema}" CASCADE')
