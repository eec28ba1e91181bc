"""The entity registry as data: kinds, their wire conventions, and event-name resolution (pure)."""

from __future__ import annotations

import pytest

from connectors.bitrix24.entities import Action, EntityRegistry, smart_process_kind


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
