"""Legacy CRM methods (``crm.deal.*`` and friends) over loopback HTTP (facts §4.1-§4.3, §4.6).

The connector's bootstrap scans and ``@ID`` re-reads use these lists, so their quirks are the
contract: values as strings and empty values as ``null``, ``select`` masks with multifields only on
request, operation-prefixed filters with typed comparison, 50-row pages with ``total``/``next``,
``start=-1`` without a count, and the empty-code error shape (``Not found`` for a deleted id).
Filter results are checked against the same rows evaluated in the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from emulator.testing import ThreadEmulator, run_emulator


def hook(http: httpx.Client, emu: Any, method: str, **params: Any) -> httpx.Response:
    """A call through the default portal's webhook (user 1, every scope)."""
    return http.post(emu.webhook_url + method, json=params)


def result(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()["result"]


@pytest.fixture(scope="module")
def reader() -> Iterator[ThreadEmulator]:
    """One emulator for the tests that only read (20 seeded deals)."""
    with run_emulator(limits=False) as running:
        yield running


@pytest.fixture(scope="module")
def deals(http, reader) -> list[dict[str, Any]]:
    """All 20 seeded deals as crm.deal.list shows them."""
    rows = result(hook(http, reader, "crm.deal.list", order={"ID": "ASC"}))
    assert len(rows) == 20
    return rows


def ids(rows: list[dict[str, Any]]) -> list[int]:
    return [int(row["ID"]) for row in rows]


def test_list_values_are_strings_and_empty_values_null(deals):
    for row in deals:
        for name, value in row.items():
            assert value is None or isinstance(value, str), (name, value)
    assert all(row["OPENED"] in ("Y", "N") for row in deals)
    assert all(row["QUOTE_ID"] is None for row in deals)
    assert float(deals[0]["OPPORTUNITY"]) > 0 and "." in deals[0]["OPPORTUNITY"]
    assert datetime.fromisoformat(deals[0]["DATE_MODIFY"]).utcoffset() is not None


def test_default_select_is_standard_and_user_fields_without_multifields(http, reader):
    contact = result(hook(http, reader, "crm.contact.list", filter={"HAS_PHONE": "Y"}))[0]
    assert "NAME" in contact and "UF_CRM_1700000000011" in contact
    assert "PHONE" not in contact and "EMAIL" not in contact
    with_phone = result(hook(http, reader, "crm.contact.list", select=["ID", "PHONE"],
                             filter={"ID": contact["ID"]}))[0]
    assert set(with_phone) == {"ID", "PHONE"}
    phone = with_phone["PHONE"][0]
    assert set(phone) == {"ID", "VALUE_TYPE", "VALUE", "TYPE_ID"} and phone["TYPE_ID"] == "PHONE"
    standard_only = result(hook(http, reader, "crm.contact.list", select=["*"], filter={"ID": contact["ID"]}))[0]
    assert "NAME" in standard_only and not any(name.startswith("UF_") for name in standard_only)
    user_fields_only = result(hook(http, reader, "crm.contact.list", select=["UF_*"], filter={"ID": contact["ID"]}))
    assert set(user_fields_only[0]) == {"ID", "UF_CRM_1700000000011", "UF_CRM_1700000000012"}


def test_get_returns_every_field_with_multifields(http, reader):
    contact_id = result(hook(http, reader, "crm.contact.list", filter={"HAS_PHONE": "Y"}, select=["ID"]))[0]["ID"]
    contact = result(hook(http, reader, "crm.contact.get", id=contact_id))
    assert contact["ID"] == contact_id
    assert contact["PHONE"] and "UF_CRM_1700000000012" in contact


@pytest.mark.parametrize(("filter_", "expected"), [
    ({">ID": 15}, lambda row: int(row["ID"]) > 15),
    ({">=ID": 5, "<ID": 9}, lambda row: 5 <= int(row["ID"]) < 9),
    ({"@ID": [1, 3, 99]}, lambda row: row["ID"] in ("1", "3")),
    ({"ID": [2, 4]}, lambda row: row["ID"] in ("2", "4")),
    ({"!@ID": [1, 2]}, lambda row: row["ID"] not in ("1", "2")),
    ({"=STAGE_ID": "NEW"}, lambda row: row["STAGE_ID"] == "NEW"),
    ({"!STAGE_ID": "NEW"}, lambda row: row["STAGE_ID"] != "NEW"),
    ({"!=STAGE_ID": "NEW"}, lambda row: row["STAGE_ID"] != "NEW"),
    ({"%TITLE": "MIR"}, lambda row: "mir" in row["TITLE"].lower()),
    ({">OPPORTUNITY": 20000}, lambda row: float(row["OPPORTUNITY"]) > 20000),
    ({"<=DATE_CREATE": "2024-01-01T00:00:00+03:00"},
     lambda row: datetime.fromisoformat(row["DATE_CREATE"]) <= datetime.fromisoformat("2024-01-01T00:00:00+03:00")),
    ({"CONTACT_ID": ""}, lambda row: row["CONTACT_ID"] is None),
    ({"!CONTACT_ID": ""}, lambda row: row["CONTACT_ID"] is not None),
    ({"UF_CRM_1700000000003": "1"}, lambda row: row["UF_CRM_1700000000003"] == "1"),
    ({"NO_SUCH_FIELD": "x"}, lambda row: True),
])
def test_filters_with_operation_prefixes_match_the_rows_they_describe(http, reader, deals, filter_, expected):
    matched = result(hook(http, reader, "crm.deal.list", filter=filter_))
    assert ids(matched) == [int(row["ID"]) for row in deals if expected(row)]


def test_order_is_typed_and_paging_gives_total_and_next(http):
    with run_emulator(limits=False, counts={"deal": 120}) as emu:
        first = hook(http, emu, "crm.deal.list", select=["ID"]).json()
        assert len(first["result"]) == 50 and first["total"] == 120 and first["next"] == 50
        last = hook(http, emu, "crm.deal.list", select=["ID"], start=100).json()
        assert ids(last["result"]) == list(range(101, 121)) and last["total"] == 120 and "next" not in last
        # start is turned into a page number: 130 reads the third page like 100 does.
        assert hook(http, emu, "crm.deal.list", select=["ID"], start=130).json()["result"] == last["result"]
        newest = result(hook(http, emu, "crm.deal.list", order={"ID": "DESC"}, select=["ID"]))
        assert ids(newest)[:3] == [120, 119, 118]
        by_amount = result(hook(http, emu, "crm.deal.list", order={"OPPORTUNITY": "ASC"}, select=["OPPORTUNITY"]))
        amounts = [float(row["OPPORTUNITY"]) for row in by_amount]
        assert amounts == sorted(amounts)


def test_start_minus_1_returns_a_page_without_total_or_next(http):
    with run_emulator(limits=False, counts={"deal": 120}) as emu:
        body = hook(http, emu, "crm.deal.list", select=["ID"], start=-1).json()
        assert len(body["result"]) == 50
        assert "total" not in body and "next" not in body


def test_keyset_loop_visits_every_deal_once(http):
    with run_emulator(limits=False, counts={"deal": 180}) as emu:
        seen: list[int] = []
        while True:
            page = result(hook(http, emu, "crm.deal.list", order={"ID": "ASC"}, select=["ID", "DATE_MODIFY"],
                               filter={">ID": seen[-1] if seen else 0}, start=-1))
            seen.extend(ids(page))
            if len(page) < 50:
                break
        assert seen == list(range(1, 181))


def test_batch_of_50_id_lists_returns_every_requested_deal(http):
    with run_emulator(limits=False, counts={"deal": 2600}) as emu:
        commands = {
            f"c{index}": "crm.deal.list?start=-1&" + "&".join(
                f"filter[@ID][]={deal_id}" for deal_id in range(index * 50 + 1, index * 50 + 51))
            for index in range(50)
        }
        answer = result(hook(http, emu, "batch", cmd=commands))
        returned = sorted(int(row["ID"]) for rows in answer["result"].values() for row in rows)
        assert returned == list(range(1, 2501))


def test_get_of_a_missing_or_deleted_id_is_not_found_with_an_empty_error_code(http, emu):
    assert result(hook(http, emu, "crm.deal.delete", id=3)) is True
    for deal_id in (3, 99999):
        response = hook(http, emu, "crm.deal.get", id=deal_id)
        assert response.status_code == 400
        assert response.json() == {"error": "", "error_description": "Not found"}
    response = hook(http, emu, "crm.deal.get", id=0)
    assert response.json() == {"error": "", "error_description": "ID is not defined or invalid"}
    assert hook(http, emu, "crm.deal.update", id=3, fields={"TITLE": "x"}).json()["error_description"] == "Not found"
    assert hook(http, emu, "crm.deal.delete", id=3).json()["error_description"] == "Not found"


def test_bad_filter_or_order_parameters_are_legacy_errors(http, reader):
    response = hook(http, reader, "crm.deal.list", filter="ID=1")
    assert response.status_code == 400
    assert response.json() == {"error": "", "error_description": "Parameter 'filter' must be array."}
    assert hook(http, reader, "crm.deal.list", order="ID").json()["error_description"] == (
        "Parameter 'order' must be array.")


def test_add_returns_the_new_id_and_update_moves_the_modification_time(http, emu):
    new_id = result(hook(http, emu, "crm.deal.add", fields={"TITLE": "Fresh", "OPPORTUNITY": 1500,
                                                             "STAGE_ID": "WON"}))
    assert isinstance(new_id, int) and new_id == 21
    created = result(hook(http, emu, "crm.deal.get", id=new_id))
    assert created["OPPORTUNITY"] == "1500.00" and created["STAGE_SEMANTIC_ID"] == "S" and created["CLOSED"] == "Y"
    assert created["DATE_CREATE"] == created["DATE_MODIFY"]

    before = result(hook(http, emu, "crm.deal.get", id=1))
    assert result(hook(http, emu, "crm.deal.update", id=1,
                       fields={"TITLE": "Renamed", "ID": 777, "DATE_CREATE": "2001-01-01", "NO_SUCH": "x"})) is True
    after = result(hook(http, emu, "crm.deal.get", id=1))
    assert after["TITLE"] == "Renamed" and after["ID"] == "1" and after["DATE_CREATE"] == before["DATE_CREATE"]
    assert datetime.fromisoformat(after["DATE_MODIFY"]) > datetime.fromisoformat(before["DATE_MODIFY"])
    assert after["MODIFY_BY_ID"] == "1"


def test_multifields_are_added_edited_and_removed(http, emu):
    contact_id = result(hook(http, emu, "crm.contact.add", fields={"NAME": "Mia"}))
    assert result(hook(http, emu, "crm.contact.get", id=contact_id))["HAS_PHONE"] == "N"
    result(hook(http, emu, "crm.contact.update", id=contact_id,
                fields={"PHONE": [{"VALUE": "+100", "VALUE_TYPE": "WORK"}]}))
    contact = result(hook(http, emu, "crm.contact.get", id=contact_id))
    assert contact["HAS_PHONE"] == "Y" and [phone["VALUE"] for phone in contact["PHONE"]] == ["+100"]
    phone_id = contact["PHONE"][0]["ID"]
    result(hook(http, emu, "crm.contact.update", id=contact_id, fields={"PHONE": [{"ID": phone_id, "VALUE": "+200"}]}))
    assert result(hook(http, emu, "crm.contact.get", id=contact_id))["PHONE"][0]["VALUE"] == "+200"
    result(hook(http, emu, "crm.contact.update", id=contact_id, fields={"PHONE": [{"ID": phone_id, "VALUE": ""}]}))
    contact = result(hook(http, emu, "crm.contact.get", id=contact_id))
    assert "PHONE" not in contact and contact["HAS_PHONE"] == "N"


def test_form_encoded_filters_reach_the_list(http, reader):
    body = http.get(reader.webhook_url + "crm.deal.list", params={"filter[>ID]": "18", "select[]": "ID"}).json()
    assert ids(body["result"]) == [19, 20]


def test_activities_list_without_communications_unless_selected(http, emu):
    activity_id = result(hook(http, emu, "crm.activity.add", fields={
        "OWNER_TYPE_ID": 2, "OWNER_ID": 1, "TYPE_ID": 2, "SUBJECT": "Call back",
        "COMMUNICATIONS": [{"VALUE": "+155500", "TYPE": "PHONE", "ENTITY_ID": 1, "ENTITY_TYPE_ID": 3}],
    }))
    listed = result(hook(http, emu, "crm.activity.list", filter={"ID": activity_id}))[0]
    assert listed["SUBJECT"] == "Call back" and "COMMUNICATIONS" not in listed
    selected = result(hook(http, emu, "crm.activity.list", filter={"ID": activity_id},
                           select=["ID", "COMMUNICATIONS"]))[0]
    assert selected["COMMUNICATIONS"][0]["VALUE"] == "+155500"
    fields = result(hook(http, emu, "crm.activity.fields"))
    assert fields["COMMUNICATIONS"]["isMultiple"] is True and fields["LAST_UPDATED"]["isReadOnly"] is True


def test_fields_describe_types_and_user_fields(http, reader):
    fields = result(hook(http, reader, "crm.deal.fields"))
    assert fields["ID"] == {"type": "integer", "isRequired": False, "isReadOnly": True, "isImmutable": False,
                            "isMultiple": False, "isDynamic": False, "title": "ID"}
    assert fields["STAGE_ID"]["type"] == "crm_status" and fields["STAGE_ID"]["statusType"] == "DEAL_STAGE"
    segment = fields["UF_CRM_1700000000006"]
    assert segment["isDynamic"] is True and segment["type"] == "enumeration"
    assert [item["VALUE"] for item in segment["items"]] == ["SMB", "Mid-market", "Enterprise"]
    assert {fields[name]["type"] for name in fields if name.startswith("UF_")} == {
        "string", "double", "boolean", "date", "datetime", "enumeration", "money"}
