"""One request budget per portal across clients: the state store's bucket (facts §6.1).

The portal counts every request of the app, whoever sends it. Two clients of one portal, each
pacing with its own bucket, together exceed the burst and earn 503 ``QUERY_LIMIT_EXCEEDED``; pacing
with the shared bucket they get none. A second portal's calls meanwhile are not delayed at all: its
bucket is its own row, and no lock is held while a client of the busy portal sleeps.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from connectors.bitrix24 import Bitrix24Client, OAuthApp, RateLimits, RetryPolicy, Throttle
from connectors.bitrix24.errors import LimitExceeded
from connectors.state import StateStore, open_state_store
from emulator.testing import ThreadEmulator, run_emulator
from tests.conftest import PG_DSN

BUSY = "default"
QUIET = "quiet"
CALLS_PER_CLIENT = 30  # two clients: 60 requests against a burst of 50
THREADS_PER_CLIENT = 2
# 503s are what the control case measures: retry them quickly rather than give up.
RETRY = RetryPolicy(attempts=4, backoff_base_s=0.05, backoff_max_s=0.2, max_query_limit_wait_s=30.0)


@pytest.fixture
def emu() -> ThreadEmulator:
    """Standard-plan limits: burst 50, drain 2/s (facts §6.1); a second portal with the same app."""
    with run_emulator(limits=True, plan="professional") as running:
        running.create_portal(QUIET, plan="professional")
        running.install(running.client_id, portal=QUIET)
        yield running


def _client(emu: ThreadEmulator, store: StateStore, portal: str, *, shared: bool) -> Bitrix24Client:
    app = OAuthApp(emu.client_id, emu.client_secret, token_url=emu.token_url)
    limits = RateLimits.standard()
    throttle = Throttle(limits, shared=store if shared else None, portal=portal)
    return Bitrix24Client(app.session(portal, store.tokens), throttle=throttle, retry=RETRY)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Where the shared buckets live: a SQLite file, or a PostgreSQL schema (the server's clock)."""
    schema = f"bucket_test_{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        yield str(tmp_path / "state.sqlite3"), schema
        return
    yield PG_DSN, schema
    with psycopg.connect(PG_DSN, autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _stores(store_target: tuple[str, str], emu: ThreadEmulator) -> tuple[StateStore, StateStore]:
    """Two handles on one store, as two processes would hold."""
    target, schema = store_target
    first = open_state_store(target, schema=schema)
    for portal in (BUSY, QUIET):
        first.save_token(portal, emu.install_tokens(portal))
    return first, open_state_store(target, schema=schema)


def _hammer(clients: list[Bitrix24Client]) -> list[BaseException]:
    """Every client sends CALLS_PER_CLIENT cheap reads from THREADS_PER_CLIENT threads at once."""
    errors: list[BaseException] = []

    def calls(client: Bitrix24Client, count: int) -> None:
        for _ in range(count):
            try:
                client.call("crm.deal.fields")
            except LimitExceeded as error:
                errors.append(error)

    per_thread = CALLS_PER_CLIENT // THREADS_PER_CLIENT
    with ThreadPoolExecutor(len(clients) * THREADS_PER_CLIENT) as pool:
        futures = [pool.submit(calls, client, per_thread) for client in clients for _ in range(THREADS_PER_CLIENT)]
        for future in futures:
            future.result()
    return errors


def _refusals(clients: list[Bitrix24Client]) -> int:
    return sum(client.usage.statuses.get(503, 0) for client in clients)


def test_two_clients_with_their_own_buckets_overrun_the_portal(emu: ThreadEmulator, tmp_path: Path) -> None:
    """The control case: without the shared bucket the same load does earn 503s."""
    stores = _stores((str(tmp_path / "state.sqlite3"), "unused"), emu)
    clients = [_client(emu, store, BUSY, shared=False) for store in stores]

    _hammer(clients)

    assert _refusals(clients) > 0


def test_two_clients_sharing_the_bucket_get_no_503(emu: ThreadEmulator, store_target: tuple[str, str]) -> None:
    stores = _stores(store_target, emu)
    busy = [_client(emu, store, BUSY, shared=True) for store in stores]
    quiet = _client(emu, stores[0], QUIET, shared=True)
    quiet_done = threading.Event()
    quiet_took: dict[str, float] = {}

    def quiet_portal() -> None:
        time.sleep(1.0)  # the busy portal's bucket is full by now and its clients are sleeping
        started = time.monotonic()
        for _ in range(10):
            quiet.call("crm.deal.fields")
        quiet_took["s"] = time.monotonic() - started
        quiet_done.set()

    started = time.monotonic()
    side = threading.Thread(target=quiet_portal)
    side.start()
    errors = _hammer(busy)
    busy_took = time.monotonic() - started
    side.join(30)

    assert errors == []
    assert _refusals(busy) == 0
    assert sum(client.usage.http_requests for client in busy) == 2 * CALLS_PER_CLIENT
    # 60 requests, 48 at once (burst 50 less the headroom), the rest at 2/s: about 6 s.
    assert busy_took >= (2 * CALLS_PER_CLIENT - RateLimits.standard().capacity) / 2.0 - 0.5
    # The quiet portal never waited for the busy one: no pacing, done while the busy one still waited.
    assert quiet_done.is_set()
    assert quiet.throttle.waited_s == 0.0
    assert quiet.usage.statuses.get(503, 0) == 0
    assert quiet_took["s"] < 2.0 < busy_took - 1.0 - quiet_took["s"]
