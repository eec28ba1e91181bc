"""Planning a sync step from queue events (pure): coalescing, tombstones, ordering, unknown events.

The queue keeps one row per (event name, object) with the time of the last occurrence (facts
§2.11), so ADD, UPDATE and DELETE rows of one object can coexist; the latest decides what the
warehouse must do. Unknown events must surface, not vanish.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from connectors.bitrix24.entities import EntityRegistry, smart_process_kind
from connectors.bitrix24.planning import plan_changes
from connectors.bitrix24.queue_rows import QueueEvent

REGISTRY = EntityRegistry.standard([smart_process_kind(1038)])
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone(timedelta(hours=3)))


def event(row_id: int, name: str, entity_id: object, seconds: int = 0, **fields: object) -> QueueEvent:
    return QueueEvent(row_id, T0 + timedelta(seconds=seconds), name,
                      {"FIELDS": {"ID": entity_id, **fields}}, f"{row_id:032x}", "p1")


def test_repeated_changes_of_one_object_fetch_it_once_with_the_latest_time() -> None:
    plan = plan_changes([event(1, "ONCRMDEALADD", "7", 0), event(2, "ONCRMDEALUPDATE", 7, 30),
                         event(3, "ONCRMDEALUPDATE", "8", 10)], REGISTRY)
    deals = plan.kinds["deal"]
    assert deals.fetch_ids == (7, 8)
    assert deals.tombstone_ids == ()
    assert deals.changed_at[7] == (T0 + timedelta(seconds=30)).astimezone(UTC)
    assert plan.events == 3 and plan.unknown == ()


def test_a_delete_with_nothing_newer_becomes_a_tombstone() -> None:
    plan = plan_changes([event(5, "ONCRMCONTACTUPDATE", 3, 0), event(9, "ONCRMCONTACTDELETE", 3, 5)],
                        REGISTRY)
    assert plan.kinds["contact"].fetch_ids == ()
    assert plan.kinds["contact"].tombstone_ids == (3,)


def test_latest_action_wins_regardless_of_arrival_order() -> None:
    # Rows arrive in ID order, but the queue row of the update was refreshed after the delete row
    # was written (the object is re-read anyway; the newest action decides).
    plan = plan_changes([event(9, "ONCRMCOMPANYDELETE", 4, 5), event(2, "ONCRMCOMPANYUPDATE", 4, 9)],
                        REGISTRY)
    assert plan.kinds["company"].fetch_ids == (4,)
    assert plan.kinds["company"].tombstone_ids == ()


def test_equal_timestamps_are_ordered_by_row_id() -> None:
    same_second = [event(11, "ONCRMLEADDELETE", 6, 0), event(10, "ONCRMLEADUPDATE", 6, 0)]
    assert plan_changes(same_second, REGISTRY).kinds["lead"].tombstone_ids == (6,)
    assert plan_changes(list(reversed(same_second)), REGISTRY).kinds["lead"].tombstone_ids == (6,)


def test_timestamps_with_different_offsets_compare_as_instants() -> None:
    earlier_in_utc = QueueEvent(1, datetime(2026, 1, 5, 12, 0, tzinfo=timezone(timedelta(hours=5))),
                                "ONCRMDEALDELETE", {"FIELDS": {"ID": 1}}, "a" * 32)
    later_in_utc = QueueEvent(2, datetime(2026, 1, 5, 8, 0, tzinfo=UTC), "ONCRMDEALUPDATE",
                              {"FIELDS": {"ID": 1}}, "b" * 32)
    assert plan_changes([later_in_utc, earlier_in_utc], REGISTRY).kinds["deal"].fetch_ids == (1,)


def test_smart_process_events_go_to_their_type_both_spellings() -> None:
    plan = plan_changes([event(1, "ONCRMDYNAMICITEMUPDATE", "24", 0, ENTITY_TYPE_ID="1038"),
                         event(2, "ONCRMDYNAMICITEMDELETE_1038", 25, 1, ENTITY_TYPE_ID=1038)], REGISTRY)
    items = plan.kinds["item:1038"]
    assert items.fetch_ids == (24,) and items.tombstone_ids == (25,)


def test_unknown_events_and_unregistered_types_are_reported_not_dropped() -> None:
    events = [event(1, "ONCRMQUOTEUPDATE", 1), event(2, "ONCRMDYNAMICITEMADD", 3, ENTITY_TYPE_ID=999),
              QueueEvent(3, T0, "ONCRMDEALUPDATE", {"ID": 5}, "c" * 32),
              event(4, "ONCRMDEALUPDATE", "not-a-number"), event(5, "ONCRMDEALUPDATE", 12)]
    plan = plan_changes(events, REGISTRY)
    assert [u.event.row_id for u in plan.unknown] == [1, 2, 3, 4]
    assert "no registered entity kind" in plan.unknown[0].reason
    assert "999" in plan.unknown[1].reason
    assert "FIELDS" in plan.unknown[2].reason
    assert plan.kinds["deal"].fetch_ids == (12,)
    assert plan.events == 5


def test_funnel_moves_are_deal_updates() -> None:
    move = event(1, "ONCRMDEALMOVETOCATEGORY", 60, CATEGORY_ID="1", STAGE_ID="C1:NEW")
    plan = plan_changes([move], REGISTRY)
    assert plan.kinds["deal"].fetch_ids == (60,)


def test_counts_cover_every_kind() -> None:
    plan = plan_changes([event(1, "ONCRMDEALUPDATE", 1), event(2, "ONCRMACTIVITYDELETE", 2),
                         event(3, "ONCRMACTIVITYADD", 3)], REGISTRY)
    assert (plan.fetch_count, plan.tombstone_count) == (2, 1)
