"""The write-back journal (``_writeback_journal``) on both engines.

A push is journalled ``intent`` in a transaction of its own before its request leaves, so a crash
cannot hide it; ``done`` commits with the re-read rows it describes, or not at all. One row per
object keeps the latest push; ``attempts`` counts the requests that carried it and ``pushed_at`` when
the portal last confirmed one.
"""

from __future__ import annotations

import pytest

from connectors.warehouse import PushEntry, PushStatus, TransactionStateError, Warehouse
from tests.warehouse.entities import PORTAL, deal_frame, deals_schema


def entry(entity_id: int, status: PushStatus, fields: str = '{"UF_CRM_SCORE":"37.5"}',
          error: str | None = None) -> PushEntry:
    return PushEntry("lead_scores", "lead", entity_id, "hash-" + fields, fields, status, error)


def journal(warehouse: Warehouse, status: PushStatus | None = None) -> dict[int, PushEntry]:
    return {e.entity_id: e for e in warehouse.pushes(PORTAL, "lead_scores", status)}


def test_a_push_moves_from_intent_to_sent_to_done_counting_attempts(warehouse: Warehouse) -> None:
    warehouse.record_pushes(PORTAL, [entry(1, PushStatus.INTENT), entry(2, PushStatus.INTENT)])
    assert {i: (e.status, e.attempts, e.pushed_at) for i, e in journal(warehouse).items()} == {
        1: (PushStatus.INTENT, 1, None), 2: (PushStatus.INTENT, 1, None)}

    warehouse.record_pushes(PORTAL, [entry(1, PushStatus.SENT),
                                     entry(2, PushStatus.FAILED, error="Field has an invalid value.")])
    with warehouse.transaction() as tx:
        tx.record_pushes(PORTAL, [entry(1, PushStatus.DONE)])
    pushed = journal(warehouse)
    assert (pushed[1].status, pushed[1].attempts, pushed[1].pushed_at is not None) == (PushStatus.DONE, 1, True)
    assert (pushed[2].status, pushed[2].error, pushed[2].pushed_at) == (PushStatus.FAILED,
                                                                        "Field has an invalid value.", None)
    assert list(journal(warehouse, PushStatus.FAILED)) == [2]

    warehouse.record_pushes(PORTAL, [entry(2, PushStatus.INTENT, fields='{"UF_CRM_SCORE":"40"}')])
    again = journal(warehouse)[2]
    assert (again.status, again.attempts, again.fields, again.error) == (
        PushStatus.INTENT, 2, '{"UF_CRM_SCORE":"40"}', None)


def test_done_marks_roll_back_with_the_rows_they_describe(warehouse: Warehouse) -> None:
    warehouse.ensure_table(deals_schema())
    warehouse.record_pushes(PORTAL, [entry(1, PushStatus.SENT)])
    with pytest.raises(RuntimeError), warehouse.transaction() as tx:
        tx.upsert(PORTAL, deals_schema(), deal_frame([1]))
        tx.record_pushes(PORTAL, [entry(1, PushStatus.DONE)])
        raise RuntimeError("crash before the commit")
    assert journal(warehouse)[1].status is PushStatus.SENT
    assert warehouse.row_versions(PORTAL, "deals").empty


def test_intents_refuse_to_join_an_open_transaction(warehouse: Warehouse) -> None:
    with warehouse.transaction(), pytest.raises(TransactionStateError):
        warehouse.record_pushes(PORTAL, [entry(1, PushStatus.INTENT)])


def test_write_backs_and_portals_keep_separate_journals(warehouse: Warehouse) -> None:
    warehouse.record_pushes(PORTAL, [entry(1, PushStatus.INTENT)])
    warehouse.record_pushes("other.bitrix24.com", [entry(1, PushStatus.FAILED)])
    warehouse.record_pushes(PORTAL, [PushEntry("churn_flags", "deal", 1, "h", "{}", PushStatus.DONE)])
    assert [e.status for e in warehouse.pushes(PORTAL, "lead_scores")] == [PushStatus.INTENT]
    assert [e.status for e in warehouse.pushes("other.bitrix24.com", "lead_scores")] == [PushStatus.FAILED]
    assert [e.key for e in warehouse.pushes(PORTAL, "churn_flags")] == [("deal", 1)]
