"""The universal ``crm.item.*`` and ``crm.type.*`` methods over loopback HTTP (facts §4.4).

Smart-process items are reachable only this way, and deals/contacts/companies/leads are reachable
this way too, over the same data as the legacy methods. The two styles must agree on values while
differing in shape: camelCase keys, native numbers, an ``items`` wrapper, coded errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from emulator.testing import ThreadEmulator, run_emulator

SMART_PROCESS = 128


@pytest.fixture(scope="module")
def reader() -> Iterator[ThreadEmulator]:
    """One emulator for the tests that only read."""
    with run_emulator(limits=False) as running:
        yield running


def hook(http: httpx.Client, emu: Any, method: str, **params: Any) -> httpx.Response:
    return http.post(emu.webhook_url + method, json=params)


def result(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()["result"]


def error(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["error"], body["error_description"]


def test_item_list_has_an_items_wrapper_camel_case_names_and_native_numbers(http, reader):
    body = hook(http, reader, "crm.item.list", entityTypeId=2, filter={"<=id": 3}).json()
    assert body["total"] == 3 and "next" not in body
    items = body["result"]["items"]
    assert [item["id"] for item in items] == [1, 2, 3]
    item = items[0]
    assert isinstance(item["opportunity"], int | float) and isinstance(item["assignedById"], int)
    assert item["entityTypeId"] == 2 and isinstance(item["updatedTime"], str)
    assert "DATE_MODIFY" not in item and "updatedTime" in item and "createdBy" in item


def test_item_and_legacy_views_show_the_same_deal(http, reader):
    legacy = result(hook(http, reader, "crm.deal.get", id=5))
    item = result(hook(http, reader, "crm.item.get", entityTypeId=2, id=5))["item"]
    assert item["id"] == int(legacy["ID"])
    assert item["title"] == legacy["TITLE"]
    assert item["opportunity"] == pytest.approx(float(legacy["OPPORTUNITY"]))
    assert item["updatedTime"] == legacy["DATE_MODIFY"]
    assert item["stageId"] == legacy["STAGE_ID"]
    assert item["opened"] == legacy["OPENED"]
    assert item["ufCrm_1700000000001"] == legacy["UF_CRM_1700000000001"]


def test_select_limits_the_fields_and_keeps_the_id(http, reader):
    items = result(hook(http, reader, "crm.item.list", entityTypeId=2, select=["title"], filter={"id": 4}))["items"]
    assert items == [{"id": 4, "title": items[0]["title"]}]


def test_item_filters_use_camel_case_names_and_or_groups(http, reader):
    either = result(hook(http, reader, "crm.item.list", entityTypeId=SMART_PROCESS, select=["id"], filter={
        "0": {"logic": "OR", "0": {"id": 2}, "1": {"id": 4}}}))["items"]
    assert [item["id"] for item in either] == [2, 4]
    both = result(hook(http, reader, "crm.item.list", entityTypeId=2, select=["id"],
                       filter={">=id": 2, "<id": 5, "!@id": [3]}))["items"]
    assert [item["id"] for item in both] == [2, 4]


def test_boolean_user_fields_filter_with_1_and_0_not_y_and_n(http, reader):
    flag = "ufCrm_1700000000003"
    everything = result(hook(http, reader, "crm.item.list", entityTypeId=2, select=[flag]))["items"]
    yes = result(hook(http, reader, "crm.item.list", entityTypeId=2, select=[flag], filter={flag: 1}))["items"]
    assert [item["id"] for item in yes] == [item["id"] for item in everything if item[flag] == "Y"]
    assert result(hook(http, reader, "crm.item.list", entityTypeId=2, filter={flag: "Y"}))["items"] == []


def test_orders_are_applied_and_checked(http, reader):
    items = result(hook(http, reader, "crm.item.list", entityTypeId=2, select=["opportunity"],
                        order={"opportunity": "DESC"}))["items"]
    amounts = [item["opportunity"] for item in items]
    assert amounts == sorted(amounts, reverse=True)
    assert error(hook(http, reader, "crm.item.list", entityTypeId=2, order={"nope": "ASC"})) == (
        400, "INVALID_ARG_VALUE", "Invalid order: field 'nope' is not allowed in order")
    assert error(hook(http, reader, "crm.item.list", entityTypeId=2, order={"id": "UP"}))[1] == "INVALID_ARG_VALUE"


def test_item_list_accepts_the_entitys_upper_case_names_in_order_and_filter(http, reader):
    def ids(**params: Any) -> list[int]:
        items = result(hook(http, reader, "crm.item.list", entityTypeId=2, select=["id"], **params))["items"]
        return [item["id"] for item in items]

    assert ids(order={"ID": "DESC"}, filter={">ID": 15}) == [20, 19, 18, 17, 16]
    assert ids(order={"ID": "ASC"}, filter={">ID": 15}) == ids(order={"id": "ASC"}, filter={">id": 15})
    stage = result(hook(http, reader, "crm.item.get", entityTypeId=2, id=3))["item"]["stageId"]
    assert ids(filter={"STAGE_ID": stage}) == ids(filter={"stageId": stage}) and 3 in ids(filter={"STAGE_ID": stage})
    newest = ids(order={"UPDATED_TIME": "DESC", "ID": "DESC"}, filter={"@ID": [2, 4]})
    assert newest == ids(order={"updatedTime": "DESC", "id": "DESC"}, filter={"@id": [2, 4]})
    flag = result(hook(http, reader, "crm.item.list", entityTypeId=2, select=["ufCrm_1700000000003"]))["items"]
    assert ids(filter={"UF_CRM_1700000000003": 1}) == [item["id"] for item in flag
                                                        if item["ufCrm_1700000000003"] == "Y"]


def test_bad_filters_are_invalid_arg_value(http, reader):
    assert error(hook(http, reader, "crm.item.list", entityTypeId=2, filter={"NO_SUCH_FIELD": "x"})) == (
        400, "INVALID_ARG_VALUE", "Invalid filter: field 'NO_SUCH_FIELD' is not allowed in filter")
    assert error(hook(http, reader, "crm.item.list", entityTypeId=2, filter={">id": "abc"})) == (
        400, "INVALID_ARG_VALUE", "Invalid filter: field 'id' has invalid value")


def test_missing_items_and_types_are_not_found(http, reader):
    assert error(hook(http, reader, "crm.item.get", entityTypeId=2, id=9999)) == (400, "NOT_FOUND", "Item not found")
    assert error(hook(http, reader, "crm.item.list", entityTypeId=999)) == (400, "NOT_FOUND", "SPA not found")


def test_item_add_update_and_delete(http, emu):
    added = result(hook(http, emu, "crm.item.add", entityTypeId=SMART_PROCESS,
                        fields={"title": "Shipment", "opportunity": 1250.5, "contactIds": [1, 2]}))["item"]
    assert added["title"] == "Shipment" and added["opportunity"] == 1250.5 and added["contactIds"] == [1, 2]
    assert added["stageId"].startswith(f"DT{SMART_PROCESS}_") and added["createdBy"] == 1
    updated = result(hook(http, emu, "crm.item.update", entityTypeId=SMART_PROCESS, id=added["id"],
                          fields={"stageId": added["stageId"].replace("NEW", "SUCCESS")}))["item"]
    assert updated["previousStageId"] == added["stageId"] and updated["movedBy"] == 1
    assert result(hook(http, emu, "crm.item.delete", entityTypeId=SMART_PROCESS, id=added["id"])) == []
    assert error(hook(http, emu, "crm.item.get", entityTypeId=SMART_PROCESS, id=added["id"]))[1] == "NOT_FOUND"


def test_contacts_show_multifields_as_fm(http, emu):
    contact_id = result(hook(http, emu, "crm.contact.add", fields={
        "NAME": "Ines", "EMAIL": [{"VALUE": "ines@example.com", "VALUE_TYPE": "WORK"}]}))
    item = result(hook(http, emu, "crm.item.get", entityTypeId=3, id=contact_id))["item"]
    assert [(entry["typeId"], entry["value"]) for entry in item["fm"]] == [("EMAIL", "ines@example.com")]
    assert isinstance(item["fm"][0]["id"], int) and item["hasEmail"] == "Y"


def test_original_uf_names_on_request(http, reader):
    item = result(hook(http, reader, "crm.item.get", entityTypeId=SMART_PROCESS, id=1, useOriginalUfNames="Y"))["item"]
    assert "UF_CRM_1_1700000000101" in item and "ufCrm_1_1700000000101" not in item
    camel = result(hook(http, reader, "crm.item.get", entityTypeId=SMART_PROCESS, id=1))["item"]
    assert camel["ufCrm_1_1700000000101"] == item["UF_CRM_1_1700000000101"]


def test_item_fields_describe_camel_case_names_with_upper_names(http, reader):
    fields = result(hook(http, reader, "crm.item.fields", entityTypeId=SMART_PROCESS))["fields"]
    assert fields["updatedTime"]["upperName"] == "UPDATED_TIME" and fields["updatedTime"]["isReadOnly"] is True
    assert fields["opened"]["type"] == "boolean"
    assert fields["ufCrm_1_1700000000102"]["isDynamic"] is True


def test_type_list_names_the_smart_processes(http, reader):
    body = hook(http, reader, "crm.type.list").json()
    assert body["total"] == 1
    [smart_process] = body["result"]["types"]
    assert smart_process["id"] == 1 and smart_process["entityTypeId"] == SMART_PROCESS
    assert result(hook(http, reader, "crm.type.get", id=1))["type"]["entityTypeId"] == SMART_PROCESS
