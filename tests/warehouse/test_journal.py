"""The CDC journal on both engines (DESIGN §3): reservations are recorded in their own transaction,
``loaded`` marks commit atomically with the data they describe, and recovery reads entries by status.
A failure, or a killed process, between the data and the commit leaves neither behind."""

from __future__ import annotations

import multiprocessing
import os
import signal
from datetime import UTC, datetime, timedelta

import pytest

from connectors.warehouse import (
    JournalStatus,
    SyncRun,
    TransactionStateError,
    UnknownProcessIds,
    Warehouse,
    open_warehouse,
)
from tests.warehouse.conftest import WarehouseTarget
from tests.warehouse.entities import PORTAL, deal_frame, deals_schema

SCHEMA = deals_schema()
P1, P2 = "a" * 32, "b" * 32


def statuses(warehouse: Warehouse) -> dict[str, JournalStatus]:
    return {entry.process_id: entry.status for entry in warehouse.journal(PORTAL)}


def deal_count(warehouse: Warehouse) -> int:
    return warehouse.query(f"SELECT count(*) FROM {warehouse.relation('deals')}")[0][0]


def test_a_process_id_moves_from_reserved_to_loaded_to_acked(warehouse: Warehouse) -> None:
    warehouse.record_reserved(PORTAL, {P1: 3})
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, SCHEMA, deal_frame([1, 2, 3]))
        assert tx.mark_loaded(PORTAL, [P1]) == 1
    assert warehouse.mark_acked(PORTAL, [P1]) == 1

    [entry] = warehouse.journal(PORTAL)
    assert (entry.process_id, entry.status, entry.event_count) == (P1, JournalStatus.ACKED, 3)
    assert entry.reserved_at <= entry.loaded_at <= entry.acked_at


def test_journal_and_data_commit_atomically(warehouse: Warehouse) -> None:
    warehouse.ensure_table(SCHEMA)
    warehouse.record_reserved(PORTAL, {P1: 2})

    with pytest.raises(RuntimeError, match="injected"), warehouse.transaction() as tx:
        tx.upsert(PORTAL, SCHEMA, deal_frame([1, 2]))
        tx.mark_loaded(PORTAL, [P1])
        raise RuntimeError("injected failure between the writes and the commit")

    assert deal_count(warehouse) == 0
    assert statuses(warehouse) == {P1: JournalStatus.RESERVED}


def _write_then_die(target: str, options: dict) -> None:
    warehouse = open_warehouse(target, **options)
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, SCHEMA, deal_frame([1, 2]))
        tx.mark_loaded(PORTAL, [P1])
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_process_killed_before_its_commit_leaves_neither_data_nor_loaded_marks(
        warehouse_target: WarehouseTarget) -> None:
    warehouse = warehouse_target.open()
    warehouse.ensure_table(SCHEMA)
    warehouse.record_reserved(PORTAL, {P1: 2})
    warehouse.close()  # DuckDB allows one writer per file: hand it to the child

    child = multiprocessing.get_context("spawn").Process(
        target=_write_then_die, args=(warehouse_target.target, warehouse_target.options))
    child.start()
    child.join(60)

    assert child.exitcode == -signal.SIGKILL
    survivor = warehouse_target.open()
    assert deal_count(survivor) == 0
    assert statuses(survivor) == {P1: JournalStatus.RESERVED}


def test_reservations_survive_a_rolled_back_data_transaction(warehouse: Warehouse) -> None:
    warehouse.record_reserved(PORTAL, {P1: 5, P2: 1})
    with pytest.raises(RuntimeError), warehouse.transaction():
        raise RuntimeError("fetch failed")

    assert [e.process_id for e in warehouse.journal(PORTAL, JournalStatus.RESERVED)] == [P1, P2]


def test_recovery_lists_entries_by_status(warehouse: Warehouse) -> None:
    warehouse.record_reserved(PORTAL, {P1: 1, P2: 1})
    with warehouse.transaction() as tx:
        tx.mark_loaded(PORTAL, [P2])

    assert [e.process_id for e in warehouse.journal(PORTAL, JournalStatus.RESERVED)] == [P1]
    assert [e.process_id for e in warehouse.journal(PORTAL, JournalStatus.LOADED)] == [P2]
    assert warehouse.journal("other.bitrix24.test") == []


def test_reserving_again_keeps_a_loaded_entry_loaded(warehouse: Warehouse) -> None:
    warehouse.record_reserved(PORTAL, {P1: 1})
    with warehouse.transaction() as tx:
        tx.mark_loaded(PORTAL, [P1])
    warehouse.record_reserved(PORTAL, {P1: 9})

    [entry] = warehouse.journal(PORTAL)
    assert (entry.status, entry.event_count) == (JournalStatus.LOADED, 1)


def test_loading_or_acking_an_unreserved_process_id_is_refused(warehouse: Warehouse) -> None:
    warehouse.record_reserved(PORTAL, {P1: 1})
    with pytest.raises(UnknownProcessIds) as refused, warehouse.transaction() as tx:
        tx.mark_loaded(PORTAL, [P1, P2])
    with pytest.raises(UnknownProcessIds):
        warehouse.mark_acked(PORTAL, [P2])

    assert refused.value.process_ids == (P2,)
    assert statuses(warehouse) == {P1: JournalStatus.RESERVED}


def test_own_transaction_calls_refuse_to_join_an_open_transaction(warehouse: Warehouse) -> None:
    with warehouse.transaction():
        with pytest.raises(TransactionStateError):
            warehouse.record_reserved(PORTAL, {P1: 1})
        with pytest.raises(TransactionStateError):
            warehouse.mark_acked(PORTAL, [P1])
        with pytest.raises(TransactionStateError), warehouse.transaction():
            pass


def test_a_transaction_object_cannot_write_after_it_ended(warehouse: Warehouse) -> None:
    with warehouse.transaction() as tx:
        pass
    with pytest.raises(TransactionStateError):
        tx.upsert(PORTAL, SCHEMA, deal_frame([1]))


def test_acked_entries_can_be_pruned(warehouse: Warehouse) -> None:
    warehouse.record_reserved(PORTAL, {P1: 1, P2: 1})
    with warehouse.transaction() as tx:
        tx.mark_loaded(PORTAL, [P1, P2])
    warehouse.mark_acked(PORTAL, [P1])

    assert warehouse.prune_journal(PORTAL, datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert statuses(warehouse) == {P2: JournalStatus.LOADED}


def test_the_sync_log_keeps_one_row_per_run_updated_in_place(warehouse: Warehouse) -> None:
    started = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
    warehouse.log_run(SyncRun("run-1", PORTAL, started))
    finished = SyncRun("run-1", PORTAL, started, started + timedelta(seconds=42), "succeeded", events=120,
                       rows_upserted=118, rows_tombstoned=2, requests=3)
    warehouse.log_run(finished)
    warehouse.log_run(SyncRun("run-2", "other.bitrix24.test", started + timedelta(minutes=1)))

    assert warehouse.runs(PORTAL) == [finished]
    assert [run.run_id for run in warehouse.runs()] == ["run-2", "run-1"]
