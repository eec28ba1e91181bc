"""The entity registry as data: kinds, their wire conventions, and event-name resolution (pure)."""

from __future__ import annotations

import pytest

from connectors.bitrix24.entities import Action, EntityRegistry, smart_process_kind
from connectors.bitrix24.errors import MalformedResponse
from connectors.bitrix24.lookups import types_of


def test_standard_kinds_cover_the_crm_core_with_their_wire_conventions() -> None:
    registry = EntityRegistry.standard()
    assert [kind.key for kind in registry] == ["deal", "contact", "company", "lead", "activity"]
    deal = registry["deal"]
    assert (deal.list_method, deal.fields_method, deal.id_field, deal.modified_field, deal.value_style) == (
        "crm.deal.list", "crm.deal.fields", "ID", "DATE_MODIFY", "legacy")
    assert "PHONE" in registry["contact"].select and "PHONE" not in deal.select


def test_a_smart_process_type_is_one_more_value_not_a_code_path() -> None:
    kind = smart_process_kind(1038, "Projects")
    assert (kind.key, kind.table, kind.list_method, kind.id_field, kind.value_style, kind.entity_type_id) == (
        "item:1038", "items_1038", "crm.item.list", "id", "item", 1038)
    assert kind.events["ONCRMDYNAMICITEMUPDATE_1038"] is Action.UPDATE
    # Every change fires both spellings: binding one keeps one queue row per change.
    assert kind.bind_events == ("ONCRMDYNAMICITEMADD", "ONCRMDYNAMICITEMUPDATE", "ONCRMDYNAMICITEMDELETE")


def test_deal_funnel_moves_are_understood_but_not_bound() -> None:
    deal = EntityRegistry.standard()["deal"]
    assert deal.events["ONCRMDEALMOVETOCATEGORY"] is Action.UPDATE
    assert deal.bind_events == ("ONCRMDEALADD", "ONCRMDEALUPDATE", "ONCRMDEALDELETE")


def test_two_smart_process_types_share_the_generic_events_by_entity_type_id() -> None:
    registry = EntityRegistry.standard([smart_process_kind(1038), smart_process_kind(1042)])
    target = registry.resolve("ONCRMDYNAMICITEMADD", {"FIELDS": {"ID": "3", "ENTITY_TYPE_ID": "1042"}})
    assert (target.kind.key, target.action, target.entity_id) == ("item:1042", Action.ADD, 3)


def test_event_names_are_matched_case_insensitively() -> None:
    target = EntityRegistry.standard().resolve("onCrmDealUpdate", {"FIELDS": {"ID": 8}})
    assert target.kind is not None and target.kind.key == "deal"


def test_registering_a_kind_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="twice"):
        EntityRegistry.standard([smart_process_kind(1038), smart_process_kind(1038)])


@pytest.mark.parametrize("listed", [(), (1042,)], ids=["no-types-listed", "other-type-listed"])
def test_an_item_event_of_an_unlisted_type_is_a_deletion_only_when_it_says_so_or_the_types_are_fresh(
        listed: tuple[int, ...]) -> None:
    """A deleted type (Bitrix24 deletes only empty ones) leaves its items' deletions queued: they
    still name the table to tombstone. Other events of an unlisted type are unknown (the types are
    asked again), and once the types were just asked, the type is gone and so is the item."""
    registry = EntityRegistry.standard([smart_process_kind(type_id) for type_id in listed])
    deleted = registry.resolve("ONCRMDYNAMICITEMDELETE", {"FIELDS": {"ID": "7", "ENTITY_TYPE_ID": "1038"}})
    assert (deleted.kind.key, deleted.kind.table, deleted.action, deleted.entity_id) == (
        "item:1038", "items_1038", Action.DELETE, 7)
    spelled = registry.resolve("ONCRMDYNAMICITEMDELETE_1038", {"FIELDS": {"ID": "7"}})
    assert (spelled.kind.key, spelled.action) == ("item:1038", Action.DELETE)

    updated = registry.resolve("ONCRMDYNAMICITEMUPDATE", {"FIELDS": {"ID": "7", "ENTITY_TYPE_ID": "1038"}})
    assert updated.kind is None and "smart-process type '1038' is not registered" in updated.reason
    gone = registry.resolve("ONCRMDYNAMICITEMUPDATE", {"FIELDS": {"ID": "7", "ENTITY_TYPE_ID": "1038"}},
                            types_fresh=True)
    assert (gone.kind.key, gone.action, gone.entity_id) == ("item:1038", Action.DELETE, 7)

    for data in ({"FIELDS": {"ID": "7"}}, {"FIELDS": {"ID": "x", "ENTITY_TYPE_ID": "1038"}},
                 {"FIELDS": {"ID": "7", "ENTITY_TYPE_ID": "-3"}}):
        assert registry.resolve("ONCRMDYNAMICITEMDELETE", data, types_fresh=True).kind is None


@pytest.mark.parametrize("types_fresh", [False, True])
@pytest.mark.parametrize(("name", "type_id"), [
    ("ONCRMDYNAMICITEMUPDATE_999", "130"),  # suffix and data disagree, the data naming a listed type
    ("ONCRMDYNAMICITEMDELETE_128", "130"),  # both listed, they disagree
    ("ONCRMDYNAMICITEMDELETE_999", "1038"),  # both unlisted, they disagree
    ("ONCRMDYNAMICITEMDELETE", "130"),  # a listed type: resolved as its own, never retired
])
def test_a_row_naming_two_types_or_a_listed_one_is_never_a_retired_deletion(name, type_id, types_fresh) -> None:
    registry = EntityRegistry.standard([smart_process_kind(128), smart_process_kind(130)])
    target = registry.resolve(name, {"FIELDS": {"ID": "1", "ENTITY_TYPE_ID": type_id}}, types_fresh=types_fresh)
    assert target.kind is None or target.kind.key in ("item:128", "item:130")
    if target.kind is not None:
        assert target.kind.key == f"item:{type_id}" and name.removeprefix("ONCRMDYNAMICITEM").startswith(
            target.action.value)


@pytest.mark.parametrize("value", [True, False, 128.5, "1e3", " ", "", "١٢٨", str(2**63), 2**63, -1, 0, [], {}, None])
def test_an_id_that_is_no_positive_int64_names_nothing(value) -> None:
    registry = EntityRegistry.standard([smart_process_kind(128)])
    as_id = registry.resolve("ONCRMDEALUPDATE", {"FIELDS": {"ID": value}})
    assert as_id.kind is not None and as_id.entity_id is None
    as_type = registry.resolve("ONCRMDYNAMICITEMDELETE", {"FIELDS": {"ID": "5", "ENTITY_TYPE_ID": value}},
                               types_fresh=True)
    assert as_type.kind is None


def test_ids_arrive_as_strings_or_numbers() -> None:
    registry = EntityRegistry.standard()
    for value in ("42", 42, 42.0, " 42 "):
        assert registry.resolve("ONCRMDEALUPDATE", {"FIELDS": {"ID": value}}).entity_id == 42


@pytest.mark.parametrize("answer", [{}, {"items": []}, {"types": [{"title": "no id"}]},
                                    {"types": [{"entityTypeId": "x"}]}, {"types": ["128"]}, "types",
                                    {"types": [{"entityTypeId": "²"}]}, {"types": [{"entityTypeId": -1}]},
                                    {"types": [{"entityTypeId": "0"}]}, {"types": [{"entityTypeId": True}]}])
def test_a_type_list_answer_that_cannot_be_read_whole_is_refused_not_read_as_fewer_types(answer) -> None:
    """A type skipped would look deleted, and its rows be tombstoned (`types_of`)."""
    with pytest.raises(MalformedResponse):
        types_of(answer)
    assert types_of({"types": [{"entityTypeId": 128, "title": "A"}, {"entityTypeId": "130"}]}) == [
        [128, "A"], [130, ""]]
