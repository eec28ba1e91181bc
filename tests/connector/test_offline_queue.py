"""The offline-event queue protocol against the emulator (real HTTP, admin OAuth app).

Binding is idempotent; peek is one read-only call; reserve hides rows from other readers until they
are acked; a change landing during a reservation is not lost; crashed reservations are found again
(by process id, or as orphans); failures go to the error lane and come back; a plan without
``rest_offline_extended`` degrades to clear=1 loudly (facts §2).
"""

from __future__ import annotations

import pytest

from connectors.bitrix24 import DegradedDelivery, EntityRegistry, OfflineQueue
from tests.connector.conftest import user_changes

CONNECTOR = "warehouse"
KINDS = EntityRegistry.standard().subset(["deal", "contact", "company"])


def bound_queue(emu, oauth_client) -> OfflineQueue:
    queue = OfflineQueue(oauth_client(emu), CONNECTOR)
    queue.bind(KINDS)
    return queue


def test_binding_is_idempotent_and_uses_the_connector_key(emu, oauth_client) -> None:
    queue = OfflineQueue(oauth_client(emu), CONNECTOR)
    first = queue.bind(KINDS)
    assert set(first.bound) == {f"ONCRM{e}{a}" for e in ("DEAL", "CONTACT", "COMPANY")
                                for a in ("ADD", "UPDATE", "DELETE")}
    second = queue.bind(KINDS)
    assert second.bound == () and set(second.already_bound) == set(first.bound)
    handlers = queue.client.call("event.get").result
    assert {(h["event"], h["connector_id"]) for h in handlers if str(h["offline"]) == "1"} == {
        (name, CONNECTOR) for name in first.bound}


def test_peek_gives_depth_and_head_in_one_call(emu, oauth_client) -> None:
    queue = bound_queue(emu, oauth_client)
    user_changes(emu, "deal", "update", [3, 1, 2])
    emu.reset_stats()
    peek = queue.peek()
    assert peek.depth == 3
    assert peek.head is not None and peek.head.event_name == "ONCRMDEALUPDATE"
    assert peek.head.event_data["FIELDS"]["ID"] == 3
    assert emu.stats()["http_requests"] == 1


def test_reserved_rows_are_hidden_until_acked_and_can_be_reread(emu, oauth_client) -> None:
    queue = bound_queue(emu, oauth_client)
    user_changes(emu, "deal", "update", list(range(1, 8)))
    user_changes(emu, "contact", "update", [1, 2])
    reserved = queue.reserve(max_rows=100)
    assert len(reserved.events) == 9 and reserved.exhausted and not reserved.at_most_once
    assert len(reserved.process_ids) == 1  # 9 rows fit the first sub-call; empty ones are dropped
    assert queue.reserve().events == []
    again = queue.reread(reserved.process_ids[0])
    assert [e.row_id for e in again.events] == [e.row_id for e in reserved.events]
    assert queue.peek().depth == 9
    assert queue.ack(reserved.process_ids) == 1
    assert queue.peek().depth == 0 and emu.queue() == []


def test_a_change_during_reservation_is_not_lost(emu, oauth_client) -> None:
    queue = bound_queue(emu, oauth_client)
    user_changes(emu, "company", "update", [1])
    reserved = queue.reserve()
    user_changes(emu, "company", "update", [1])  # lands while the first row is reserved
    queue.ack(reserved.process_ids)
    later = queue.reserve()
    assert [(e.event_name, e.event_data["FIELDS"]["ID"]) for e in later.events] == [("ONCRMCOMPANYUPDATE", 1)]


def test_orphaned_reservations_are_found_through_the_list(emu, oauth_client) -> None:
    queue = bound_queue(emu, oauth_client)
    user_changes(emu, "deal", "update", list(range(1, 13)))
    journaled = queue.reserve(max_rows=50).process_ids
    lost = queue.reserve(max_rows=50).process_ids  # crash: the journal never saw these
    assert journaled and lost == ()  # 12 rows went into the first reservation
    user_changes(emu, "contact", "update", list(range(1, 5)))
    lost = queue.reserve(max_rows=50).process_ids
    assert queue.find_orphans(journaled) == lost
    assert queue.find_orphans([*journaled, *lost]) == ()
    recovered = queue.reread_all(lost)
    assert sorted(e.event_data["FIELDS"]["ID"] for e in recovered[0].events) == [1, 2, 3, 4]


def test_failed_messages_move_to_the_error_lane_and_come_back(emu, oauth_client) -> None:
    queue = bound_queue(emu, oauth_client)
    user_changes(emu, "deal", "update", [5, 6])
    reserved = queue.reserve()
    poison = next(e for e in reserved.events if e.event_data["FIELDS"]["ID"] == 6)
    queue.fail(reserved.process_ids[0], [poison.message_id])
    queue.ack(reserved.process_ids)
    assert queue.peek().depth == 0
    assert queue.peek(error_lane=True).depth == 1
    retry = queue.reserve_errors()
    assert [e.message_id for e in retry.events] == [poison.message_id]
    queue.ack(retry.process_ids)
    assert queue.peek(error_lane=True).depth == 0


def test_a_plan_without_extended_events_drains_with_clear_1_loudly(emu, oauth_client) -> None:
    emu.patch_portal(plan="standard")
    queue = OfflineQueue(oauth_client(emu), CONNECTOR)
    assert queue.features(refresh=True).offline_extended is False
    assert queue.connector == ""  # no rest_auth_connector either: the plain queue
    queue.bind(KINDS)
    user_changes(emu, "deal", "update", [1, 2])
    with pytest.warns(DegradedDelivery, match="at-most-once"):
        drained = queue.reserve()
    assert drained.at_most_once and drained.process_ids == () and len(drained.events) == 2
    assert emu.queue() == []  # gone once read: reconciliation repairs what a crash loses


def test_plan_features_are_asked_once(emu, oauth_client) -> None:
    queue = OfflineQueue(oauth_client(emu), CONNECTOR)
    queue.features(refresh=True)
    emu.reset_stats()
    assert queue.extended_mode() and OfflineQueue(queue.client, CONNECTOR).features().auth_connector
    assert emu.stats()["http_requests"] == 0
