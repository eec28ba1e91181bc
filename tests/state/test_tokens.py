"""OAuth tokens in the state store: saved atomically, shared by processes, and refreshed by one
process at a time. Bitrix24 rotates the refresh token on every refresh (facts §7.2), so two
processes refreshing at once would strand the portal; the refresh lock prevents that."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from connectors.state import LockTimeout, StateStore, UnsupportedStateStore, open_state_store
from tests.state.conftest import StoreTarget

PORTAL = "acme.bitrix24.de"


def test_a_saved_token_is_loaded_back_and_a_missing_one_is_none(store: StateStore) -> None:
    token = {"access_token": "at-1", "refresh_token": "rt-1", "expires": 1_700_000_000,
             "client_endpoint": "https://acme.bitrix24.de/rest/", "scope": "crm"}
    store.tokens.save(PORTAL, token)

    assert store.tokens.load(PORTAL) == token
    assert store.tokens.load("other.bitrix24.de") is None


def _save_many(target: StoreTarget, worker: int, rounds: int) -> None:
    store = target.open()
    for round_ in range(rounds):
        token = {"access_token": f"at-{worker}-{round_}", "refresh_token": f"rt-{worker}-{round_}"}
        store.tokens.save(PORTAL, token)
        store.tokens.save(f"worker{worker}.bitrix24.de", token)


def test_processes_saving_at_once_never_leave_a_torn_token(store_target: StoreTarget) -> None:
    store_target.open()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_save_many, args=(store_target, worker, 20)) for worker in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)

    store = store_target.open()
    assert [process.exitcode for process in workers] == [0, 0, 0, 0]
    shared = store.tokens.load(PORTAL)
    assert shared["access_token"].removeprefix("at-") == shared["refresh_token"].removeprefix("rt-")
    assert [store.tokens.load(f"worker{w}.bitrix24.de")["access_token"] for w in range(4)] == [
        f"at-{w}-19" for w in range(4)]


def _refresh_under_lock(target: StoreTarget, rounds: int) -> None:
    store = target.open()
    for _ in range(rounds):
        with store.tokens.refresh_lock(PORTAL):
            current = store.tokens.load(PORTAL)
            time.sleep(0.01)  # the round trip to the OAuth server
            store.tokens.save(PORTAL, {"refresh_count": current["refresh_count"] + 1})


def test_the_refresh_lock_lets_one_process_refresh_at_a_time(store_target: StoreTarget) -> None:
    store_target.open().tokens.save(PORTAL, {"refresh_count": 0})
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_refresh_under_lock, args=(store_target, 5)) for _ in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)

    assert [process.exitcode for process in workers] == [0, 0, 0, 0]
    assert store_target.open().tokens.load(PORTAL) == {"refresh_count": 20}  # no refresh lost


def test_a_held_refresh_lock_makes_others_time_out_but_not_other_portals(store: StateStore) -> None:
    outcomes: list[str] = []

    def contend(portal: str) -> None:
        try:
            with store.refresh_lock(portal, timeout=0.3):
                outcomes.append(f"{portal} acquired")
        except LockTimeout:
            outcomes.append(f"{portal} timed out")

    with store.refresh_lock(PORTAL):
        for portal in (PORTAL, "other.bitrix24.de"):
            thread = threading.Thread(target=contend, args=(portal,))
            thread.start()
            thread.join(10)
    with store.refresh_lock(PORTAL, timeout=0.3):
        outcomes.append("released")

    assert outcomes == [f"{PORTAL} timed out", "other.bitrix24.de acquired", "released"]


def test_the_sqlite_store_is_created_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "state" / "state.sqlite3"
    previous_umask = os.umask(0o022)  # a usual umask would leave new files world-readable
    try:
        store = open_state_store(path)
        holder = sqlite3.connect(path)  # keeps the -wal and -shm files in place while we look
        holder.execute("PRAGMA journal_mode")
        store.tokens.save(PORTAL, {"access_token": "at"})
        with store.refresh_lock(PORTAL):
            pass
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
        holder.close()
    finally:
        os.umask(previous_umask)

    assert modes == {"state.sqlite3": 0o600, "state.sqlite3-wal": 0o600, "state.sqlite3-shm": 0o600,
                     "state.sqlite3.locks": 0o700}
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize("target", ["mysql://admin:hunter2@db/x", "redis://:hunter2@cache"])
def test_an_unknown_scheme_is_rejected_without_echoing_the_url(target: str) -> None:
    with pytest.raises(UnsupportedStateStore) as refused:
        open_state_store(target)
    assert "hunter2" not in str(refused.value)
