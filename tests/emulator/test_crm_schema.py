"""CRM schema and seeded data: user fields added at run time, and data that is the same for a seed.

Portal admins add ``UF_CRM_*`` fields whenever they like, so the connector must pick up a new column
from ``*.fields`` and see it in lists (facts §4.5); the emulator must let tests do exactly that. And
every test and benchmark relies on the seeded portal being reproducible from its seed.
"""

from __future__ import annotations

from typing import Any

import httpx

import emulator.crm
from emulator.portal import Portal, User


def hook(http: httpx.Client, emu: Any, method: str, **params: Any) -> httpx.Response:
    return http.post(emu.webhook_url + method, json=params)


def result(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()["result"]


def test_user_field_added_at_run_time_appears_in_fields_and_lists(http, emu):
    field_id = result(hook(http, emu, "crm.deal.userfield.add", fields={
        "FIELD_NAME": "SHOE_SIZE", "USER_TYPE_ID": "double", "EDIT_FORM_LABEL": "Shoe size"}))
    assert isinstance(field_id, int)

    described = result(hook(http, emu, "crm.deal.fields"))["UF_CRM_SHOE_SIZE"]
    assert described["type"] == "double" and described["isDynamic"] is True
    assert described["formLabel"] == "Shoe size"
    rows = result(hook(http, emu, "crm.deal.list", select=["ID", "UF_*"]))
    assert all(row["UF_CRM_SHOE_SIZE"] is None for row in rows)

    assert result(hook(http, emu, "crm.deal.update", id=2, fields={"UF_CRM_SHOE_SIZE": 42.5}))
    assert result(hook(http, emu, "crm.deal.get", id=2))["UF_CRM_SHOE_SIZE"] == "42.50"
    assert result(hook(http, emu, "crm.deal.list", filter={">UF_CRM_SHOE_SIZE": 40}, select=["ID"])) == [
        {"ID": "2"}]
    item = result(hook(http, emu, "crm.item.get", entityTypeId=2, id=2))["item"]
    assert item["ufCrmShoeSize"] == 42.5
    item_fields = result(hook(http, emu, "crm.item.fields", entityTypeId=2))["fields"]
    assert item_fields["ufCrmShoeSize"]["upperName"] == "UF_CRM_SHOE_SIZE"

    definitions = result(hook(http, emu, "crm.deal.userfield.list"))
    assert [definition["FIELD_NAME"] for definition in definitions][-1] == "UF_CRM_SHOE_SIZE"
    assert result(hook(http, emu, "crm.deal.userfield.get", id=field_id))["USER_TYPE_ID"] == "double"


def test_removed_user_field_leaves_fields_and_rows(http, emu):
    field_id = result(hook(http, emu, "crm.contact.userfield.add", fields={"FIELD_NAME": "TEMP",
                                                                            "USER_TYPE_ID": "string"}))
    assert "UF_CRM_TEMP" in result(hook(http, emu, "crm.contact.get", id=1))
    assert result(hook(http, emu, "crm.contact.userfield.delete", id=field_id)) is True
    assert "UF_CRM_TEMP" not in result(hook(http, emu, "crm.contact.fields"))
    assert "UF_CRM_TEMP" not in result(hook(http, emu, "crm.contact.get", id=1))


def test_enumeration_user_fields_store_the_item_id(http, emu):
    result(hook(http, emu, "crm.lead.userfield.add", fields={
        "FIELD_NAME": "COLOUR", "USER_TYPE_ID": "enumeration",
        "LIST": [{"VALUE": "Red"}, {"VALUE": "Blue"}]}))
    items = result(hook(http, emu, "crm.lead.fields"))["UF_CRM_COLOUR"]["items"]
    blue = next(item["ID"] for item in items if item["VALUE"] == "Blue")
    assert result(hook(http, emu, "crm.lead.update", id=1, fields={"UF_CRM_COLOUR": blue}))
    assert result(hook(http, emu, "crm.lead.get", id=1))["UF_CRM_COLOUR"] == blue
    assert result(hook(http, emu, "crm.item.get", entityTypeId=1, id=1))["item"]["ufCrmColour"] == int(blue)


def test_duplicate_or_malformed_user_fields_are_refused(http, emu):
    response = hook(http, emu, "crm.deal.userfield.add", fields={"FIELD_NAME": "1700000000001",
                                                                  "USER_TYPE_ID": "string"})
    assert response.status_code == 400 and response.json()["error"] == ""
    response = hook(http, emu, "crm.deal.userfield.add", fields={"FIELD_NAME": "X", "USER_TYPE_ID": "hologram"})
    assert response.status_code == 400


def test_smart_process_user_fields_can_be_added_by_the_control_side(http, emu):
    portal = emu.world.portal("default")
    user_field = portal.crm.add_user_field("item:128", "WAREHOUSE", "string", label="Warehouse")
    assert user_field.name == "UF_CRM_1_WAREHOUSE"
    fields = result(hook(http, emu, "crm.item.fields", entityTypeId=128))["fields"]
    assert fields["ufCrm_1Warehouse"]["upperName"] == "UF_CRM_1_WAREHOUSE"


def _portal(seed: int) -> Portal:
    portal = Portal("seeded")
    portal.users = {1: User(1, "Admin", True), 2: User(2, "Sales")}
    emulator.crm.attach(portal, seed, {"deal": 300, "contact": 100, "company": 30, "lead": 50,
                                       "activity": 200, "item": 40, "smart_process_types": 2})
    return portal


def test_seeded_data_is_the_same_for_the_same_seed_and_differs_for_another():
    first, again, other = _portal(7), _portal(7), _portal(8)
    entities = first.crm.entities()
    assert entities == ["deal", "contact", "company", "lead", "activity", "item:128", "item:130"]
    for entity in entities:
        assert first.crm.ground_truth(entity) == again.crm.ground_truth(entity), entity
    assert first.crm.ground_truth("deal") != other.crm.ground_truth("deal")


def test_seeding_creates_the_requested_counts_with_links_between_entities():
    portal = _portal(3)
    counts = {entity: len(portal.crm.table(entity).rows) for entity in portal.crm.entities()}
    assert counts == {"deal": 300, "contact": 100, "company": 30, "lead": 50, "activity": 200,
                      "item:128": 40, "item:130": 40}
    deals = portal.crm.table("deal").rows.values()
    companies = portal.crm.table("company").rows
    linked = [deal["COMPANY_ID"] for deal in deals if deal["COMPANY_ID"] is not None]
    assert linked and all(int(company_id) in companies for company_id in linked)
    # Ids grow with creation time, as on a real portal.
    created = [deal["DATE_CREATE"] for deal in deals]
    assert created == sorted(created)
