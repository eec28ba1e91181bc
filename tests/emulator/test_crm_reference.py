"""The emulator's reference-data methods answer in the documented shapes (facts §4.8).

``user.get`` pages by 50 and filters active and fired users; ``department.get`` lists the structure;
``crm.status.list`` holds every dictionary with the stages of each pipeline under its own
``ENTITY_ID``; ``crm.category.list`` answers the crm.item style; ``crm.stagehistory.list`` gets a row
whenever an item is created or changes stage, pages by 50 and refuses unknown types and fields.
Seeded deals refer only to things these methods list (stages, pipelines, users, currencies).
"""

from __future__ import annotations

import httpx

from emulator.crm.origin import Origin
from emulator.portal import User
from emulator.testing import ThreadEmulator


def call(http: httpx.Client, emu: ThreadEmulator, method: str, **params) -> dict:
    response = http.post(emu.webhook_url + method, json=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_user_get_pages_by_fifty_and_filters_fired_users(http, emu):
    portal = emu.world.portal("default")
    with portal.lock:
        for user_id in range(100, 160):
            portal.users[user_id] = User(user_id, f"Temp Worker{user_id}", active=user_id % 2 == 0, departments=(2,))
    first = call(http, emu, "user.get")
    assert len(first["result"]) == 50 and first["total"] == len(portal.users) and first["next"] == 50
    second = call(http, emu, "user.get", start=50)
    assert [row["ID"] for row in first["result"] + second["result"]] == [str(u) for u in sorted(portal.users)]
    fired = call(http, emu, "user.get", FILTER={"ACTIVE": "N"})["result"]
    assert {row["ID"] for row in fired} == {"8", *(str(u) for u in range(101, 160, 2))}
    assert all(row["ACTIVE"] is False for row in fired)
    [boris] = call(http, emu, "user.get", ID=2)["result"]
    assert boris["NAME"] == "Boris" and boris["LAST_NAME"] == "Sales" and boris["UF_DEPARTMENT"] == [2]


def test_department_get_lists_the_company_structure(http, emu):
    departments = call(http, emu, "department.get")["result"]
    by_id = {row["ID"]: row for row in departments}
    assert "PARENT" not in by_id["1"] and by_id["2"]["PARENT"] == "1" and by_id["4"]["PARENT"] == "2"
    assert by_id["2"]["UF_HEAD"] == "4" and isinstance(by_id["2"]["SORT"], int)
    assert [row["ID"] for row in call(http, emu, "department.get", PARENT=2)["result"]] == ["4", "5"]


def test_status_list_holds_each_pipelines_stages_under_its_own_entity_id(http, emu):
    rows = call(http, emu, "crm.status.list")["result"]
    entity_ids = {row["ENTITY_ID"] for row in rows}
    assert {"STATUS", "SOURCE", "CONTACT_TYPE", "COMPANY_TYPE", "INDUSTRY", "DEAL_STAGE", "DEAL_STAGE_1",
            "DEAL_STAGE_2", "DYNAMIC_128_STAGE_11"} <= entity_ids
    partners = call(http, emu, "crm.status.list", filter={"ENTITY_ID": "DEAL_STAGE_1"})["result"]
    assert [row["STATUS_ID"] for row in partners] == ["C1:NEW", "C1:NEGOTIATION", "C1:CONTRACT", "C1:WON", "C1:LOSE"]
    assert [row["EXTRA"]["SEMANTICS"] for row in partners][-2:] == ["success", "failure"]
    assert all(row["CATEGORY_ID"] == "1" and isinstance(row["SORT"], str) for row in partners)


def test_category_list_answers_pipelines_in_the_item_style(http, emu):
    deals = call(http, emu, "crm.category.list", entityTypeId=2)
    assert deals["total"] == 3
    assert deals["result"]["categories"][0] == {"id": 0, "name": "Sales", "sort": 100, "entityTypeId": 2,
                                                "isDefault": "Y"}
    [spa] = call(http, emu, "crm.category.list", entityTypeId=128)["result"]["categories"]
    assert spa["id"] == 11 and spa["isDefault"] == "Y"
    assert http.post(emu.webhook_url + "crm.category.list", json={"entityTypeId": 999}).status_code == 400


def test_currency_list_has_one_base_currency(http, emu):
    rows = call(http, emu, "crm.currency.list")["result"]
    assert [row["CURRENCY"] for row in rows] == ["USD", "EUR", "RUB"]
    assert [row["BASE"] for row in rows] == ["Y", "N", "N"] and rows[1]["AMOUNT"] == "1.0800"


def test_seeded_deals_refer_to_listed_stages_pipelines_users_and_currencies(http, emu):
    stages = {(row["ENTITY_ID"], row["STATUS_ID"]) for row in call(http, emu, "crm.status.list")["result"]}
    users = {row["ID"] for row in call(http, emu, "user.get")["result"]}
    currencies = {row["CURRENCY"] for row in call(http, emu, "crm.currency.list")["result"]}
    deals = call(http, emu, "crm.deal.list", select=["ID", "CATEGORY_ID", "STAGE_ID", "ASSIGNED_BY_ID", "CURRENCY_ID"])
    assert {row["CATEGORY_ID"] for row in deals["result"]} == {"0", "1", "2"}
    for deal in deals["result"]:
        entity_id = "DEAL_STAGE" if deal["CATEGORY_ID"] == "0" else f"DEAL_STAGE_{deal['CATEGORY_ID']}"
        assert (entity_id, deal["STAGE_ID"]) in stages
        assert deal["ASSIGNED_BY_ID"] in users and deal["CURRENCY_ID"] in currencies


def test_a_stage_move_appends_a_history_row_and_other_edits_do_not(http, emu):
    before = call(http, emu, "crm.stagehistory.list", entityTypeId=2, filter={"OWNER_ID": 4})["result"]["items"]
    crm = emu.world.portal("default").crm
    category = crm.table("deal").rows[4]["CATEGORY_ID"]
    target = "LOSE" if category == "0" else f"C{category}:LOSE"
    crm.write("deal", "update", 4, {"TITLE": "renamed"}, Origin(user_id=2))
    crm.write("deal", "update", 4, {"STAGE_ID": target}, Origin(user_id=2))
    after = call(http, emu, "crm.stagehistory.list", entityTypeId=2, filter={"OWNER_ID": 4},
                 order={"ID": "DESC"})["result"]["items"]
    assert len(after) == len(before) + 1
    assert after[0]["STAGE_ID"] == target and after[0]["TYPE_ID"] == 3 and after[0]["STAGE_SEMANTIC_ID"] == "F"
    assert after[0]["CATEGORY_ID"] == int(category) and isinstance(after[0]["ID"], int)


def test_stage_history_pages_by_id_and_leads_report_statuses(http, emu):
    crm = emu.world.portal("default").crm
    for _ in range(30):
        crm.write("deal", "add", None, {"TITLE": "new"}, Origin(user_id=2))
    first = call(http, emu, "crm.stagehistory.list", entityTypeId=2, order={"ID": "ASC"})
    assert len(first["result"]["items"]) == 50 and first["next"] == 50 and first["total"] > 50
    last = first["result"]["items"][-1]["ID"]
    keyset = call(http, emu, "crm.stagehistory.list", entityTypeId=2, filter={">ID": last}, order={"ID": "ASC"},
                  start=-1)
    assert "total" not in keyset and keyset["result"]["items"][0]["ID"] == last + 1
    [lead] = call(http, emu, "crm.stagehistory.list", entityTypeId=1, filter={"ID": 1})["result"]["items"]
    assert set(lead) == {"ID", "TYPE_ID", "OWNER_ID", "CREATED_TIME", "STATUS_SEMANTIC_ID", "STATUS_ID"}


def test_stage_history_refuses_unknown_types_and_fields(http, emu):
    wrong_type = http.post(emu.webhook_url + "crm.stagehistory.list", json={"entityTypeId": 7})
    assert wrong_type.status_code == 400 and wrong_type.json()["error"] == "ENTITY_TYPE_NOT_SUPPORTED"
    wrong_field = http.post(emu.webhook_url + "crm.stagehistory.list", json={"entityTypeId": 2,
                                                                            "filter": {"TITLE": "x"}})
    assert wrong_field.status_code == 400 and wrong_field.json()["error"] == "INVALID_ARG_VALUE"


def test_reference_changes_raise_their_events(http, emu, tokens):
    def app(method: str, **params) -> dict:
        response = http.post(f"{emu.url}/rest/{method}", json={**params, "auth": tokens["access_token"]})
        assert response.status_code == 200, response.text
        return response.json()["result"]

    names = app("events")
    assert {"ONCRMDEALUSERFIELDADD", "ONCRMDEALUSERFIELDSETENUMVALUES", "ONCRMTYPEADD"} <= set(names)
    for event in ("ONCRMDEALUSERFIELDADD", "ONCRMDEALUSERFIELDSETENUMVALUES", "ONCRMTYPEADD"):
        assert app("event.bind", event=event, event_type="offline") is True
    crm = emu.world.portal("default").crm
    added = crm.add_user_field("deal", "CHANNEL", "enumeration", label="Channel", items=("Web", "Phone"))
    crm.set_enum_values("deal", added.name, ("Web", "Phone", "Partner"))
    crm.add_smart_process("Deliveries")
    queued = app("event.offline.get", clear=1)["events"]
    assert [row["EVENT_NAME"] for row in queued] == ["ONCRMDEALUSERFIELDADD", "ONCRMDEALUSERFIELDSETENUMVALUES",
                                                     "ONCRMTYPEADD"]
    assert queued[0]["EVENT_DATA"] == {"FIELDS": {"ID": str(added.id), "ENTITY_ID": "CRM_DEAL",
                                                  "FIELD_NAME": "UF_CRM_CHANNEL"}}
    [field] = [row for row in app("crm.deal.userfield.list") if row["FIELD_NAME"] == "UF_CRM_CHANNEL"]
    web, phone, partner = field["LIST"]
    assert (web["VALUE"], phone["VALUE"], partner["VALUE"]) == ("Web", "Phone", "Partner")
    assert [item[0] for item in added.items] == [int(web["ID"]), int(phone["ID"])]  # kept items keep their ids
