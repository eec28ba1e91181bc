"""The analysts' snapshot of a DuckDB warehouse: DuckDB lets one process hold the live file, and any
other handle blocks it, so analysts read a copy that is replaced atomically after commits. Readers in
other processes must never fail or see a half-written file, even while a commit runs."""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.synchronize import Event
from pathlib import Path

import duckdb
import pytest

from connectors.warehouse import WarehouseError, open_warehouse
from tests.warehouse.entities import PORTAL, deal_frame, deals_schema

SCHEMA = deals_schema()


def snapshot_count(path: Path) -> int:
    with duckdb.connect(str(path), read_only=True) as connection:
        return connection.execute("SELECT count(*) FROM deals_current").fetchone()[0]


def _read_until_stopped(path: str, stop: Event, reads: multiprocessing.Value, results: multiprocessing.Queue) -> None:
    counts, errors = [], []
    held = duckdb.connect(path, read_only=True)  # stays open across every replacement
    held_before = held.execute("SELECT count(*) FROM deals").fetchone()[0]
    while not stop.is_set():
        try:
            with duckdb.connect(path, read_only=True) as connection:
                counts.append(connection.execute("SELECT count(*) FROM deals_current").fetchone()[0])
        except duckdb.Error as error:
            errors.append(str(error))
        with reads.get_lock():
            reads.value += 1
    held_after = held.execute("SELECT count(*) FROM deals").fetchone()[0]
    results.put((counts, errors, held_before, held_after))


def test_the_snapshot_can_be_read_while_a_commit_runs(tmp_path: Path) -> None:
    warehouse = open_warehouse(tmp_path / "live.duckdb", publish_every=0)
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, SCHEMA, deal_frame(range(1, 11)))
    snapshot = tmp_path / "live.snapshot.duckdb"
    context = multiprocessing.get_context("spawn")
    stop, reads, results = context.Event(), context.Value("i", 0), context.Queue()
    reader = context.Process(target=_read_until_stopped, args=(str(snapshot), stop, reads, results))
    reader.start()
    try:
        for batch in range(1, 5):
            with warehouse.transaction() as tx:
                tx.upsert(PORTAL, SCHEMA, deal_frame(range(batch * 10 + 1, batch * 10 + 11)))
                # Hold the transaction open until the reader has read the snapshot meanwhile.
                seen = reads.value
                deadline = time.monotonic() + 30
                while reads.value < seen + 3 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert reads.value >= seen + 3
    finally:
        stop.set()
    counts, errors, held_before, held_after = results.get(timeout=30)
    reader.join(30)
    warehouse.close()

    assert errors == []
    assert set(counts) <= {10, 20, 30, 40, 50}
    assert counts == sorted(counts)
    assert (held_before, held_after) == (10, 10)
    assert snapshot_count(snapshot) == 50


def test_by_default_the_snapshot_is_published_only_on_request(tmp_path: Path) -> None:
    warehouse = open_warehouse(tmp_path / "live.duckdb", snapshot_path=tmp_path / "analysts" / "deals.duckdb")
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, SCHEMA, deal_frame([1, 2]))
    assert not (tmp_path / "analysts" / "deals.duckdb").exists()

    published = warehouse.publish_snapshot()

    assert published == tmp_path / "analysts" / "deals.duckdb"
    assert snapshot_count(published) == 2
    assert list(published.parent.iterdir()) == [published]  # no temporary file left behind


def test_publishing_after_commits_is_throttled(tmp_path: Path) -> None:
    warehouse = open_warehouse(tmp_path / "live.duckdb", publish_every=3600)
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, SCHEMA, deal_frame([1]))
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, SCHEMA, deal_frame([2]))

    assert snapshot_count(tmp_path / "live.snapshot.duckdb") == 1
    warehouse.publish_snapshot()
    assert snapshot_count(tmp_path / "live.snapshot.duckdb") == 2


def test_a_rolled_back_transaction_publishes_nothing(tmp_path: Path) -> None:
    warehouse = open_warehouse(tmp_path / "live.duckdb", publish_every=0)
    with pytest.raises(RuntimeError), warehouse.transaction() as tx:
        tx.upsert(PORTAL, SCHEMA, deal_frame([1]))
        raise RuntimeError("injected")

    assert not (tmp_path / "live.snapshot.duckdb").exists()


def _open_and_report(path: str, results: multiprocessing.Queue) -> None:
    try:
        open_warehouse(path)
    except WarehouseError as error:
        results.put(type(error).__name__)
    else:
        results.put("opened")


def test_a_second_writer_process_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    warehouse = open_warehouse(tmp_path / "live.duckdb")
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    other = context.Process(target=_open_and_report, args=(str(tmp_path / "live.duckdb"), results))
    other.start()
    outcome = results.get(timeout=60)
    other.join(30)
    warehouse.close()

    assert outcome == "WarehouseError"
