"""Push signals in the state store: the receiver notes every ONOFFLINEEVENT (facts §2.13) and the
Dagster sensor reads only what arrived since its cursor, so a tick stays cheap with thousands of
portals and never misses a signal committed while it was reading."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta

from connectors.state import StateStore
from tests.state.conftest import StoreTarget

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def test_signals_since_returns_only_portals_signalled_after_the_cursor(store: StateStore) -> None:
    assert store.signals_since(None) == ({}, 0)
    store.record_signal("a.bitrix24.de", T0)
    store.record_signal("b.bitrix24.de", T0 + timedelta(seconds=1))
    first, cursor = store.signals_since(None)

    store.record_signal("b.bitrix24.de", T0 + timedelta(seconds=5))
    second, next_cursor = store.signals_since(cursor)

    assert first == {"a.bitrix24.de": T0, "b.bitrix24.de": T0 + timedelta(seconds=1)}
    assert second == {"b.bitrix24.de": T0 + timedelta(seconds=5)}
    assert store.signals_since(next_cursor) == ({}, next_cursor)


def test_a_late_delivered_older_signal_keeps_the_latest_time(store: StateStore) -> None:
    store.record_signal("a.bitrix24.de", T0 + timedelta(minutes=1))
    _, cursor = store.signals_since(None)
    store.record_signal("a.bitrix24.de", T0)

    assert store.signals_since(cursor)[0] == {"a.bitrix24.de": T0 + timedelta(minutes=1)}


def _signal_portals(target: StoreTarget, worker: int, portals: int) -> None:
    store = target.open()
    for portal in range(portals):
        store.record_signal(f"p{portal}.worker{worker}.bitrix24.de")


def test_a_reader_polling_while_processes_record_misses_no_portal(store_target: StoreTarget) -> None:
    store = store_target.open()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_signal_portals, args=(store_target, worker, 50)) for worker in range(4)]
    for process in workers:
        process.start()
    seen: set[str] = set()
    cursor = None
    while any(process.is_alive() for process in workers):
        signalled, cursor = store.signals_since(cursor)
        seen |= signalled.keys()
    for process in workers:
        process.join(60)
    signalled, cursor = store.signals_since(cursor)
    seen |= signalled.keys()

    assert [process.exitcode for process in workers] == [0, 0, 0, 0]
    assert len(seen) == 200
    store.record_signal("p0.worker0.bitrix24.de")
    assert list(store.signals_since(cursor)[0]) == ["p0.worker0.bitrix24.de"]
