"""The offline event queue over loopback HTTP: coalescing, reservation, clear and the error lane.

The connector's correctness argument rests on these behaviours of ``b_rest_event_offline`` (facts
§2.7-§2.12): one row per changed object, a new row for a change that lands while the old one is
reserved, atomic reservation for parallel readers, acknowledgement by process id, message id or row
id, and an error lane that keeps a poisoned object out of normal reads. Each test drives the real
emulator with plain httpx; "user" edits go through the portal's CRM write path, as the UI's would.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from emulator.events import Origin
from emulator.testing import ThreadEmulator, run_emulator

UI_USER = Origin(user_id=2)


def rest(http: httpx.Client, emu: ThreadEmulator, token: str, method: str, **params: Any) -> httpx.Response:
    return http.post(f"{emu.url}/rest/{method}", json={**params, "auth": token})


def result(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()["result"]


def user_edit(emu: ThreadEmulator, entity: str, entity_id: int, **fields: Any) -> None:
    emu.world.portal("default").crm.write(entity, "update", entity_id, fields, UI_USER)


@pytest.fixture
def app(emu: ThreadEmulator, tokens: dict[str, Any], http: httpx.Client):
    """Calls as the default app (admin user 1), with ONCRMDEALUPDATE bound offline."""
    token = tokens["access_token"]

    def call(method: str, **params: Any) -> httpx.Response:
        return rest(http, emu, token, method, **params)

    assert result(call("event.bind", event="ONCRMDEALUPDATE", event_type="offline")) is True
    return call


def listed(app) -> list[dict[str, Any]]:
    return result(app("event.offline.list"))


def test_deal_updated_1000_times_leaves_one_queue_row_stamped_with_the_last_change(emu, app):
    for number in range(999):
        user_edit(emu, "deal", 7, TITLE=f"edit {number}")
    first_row = listed(app)
    time.sleep(1.1)  # the last edit lands in a later second than the first 999
    before_last = int(time.time())
    user_edit(emu, "deal", 7, TITLE="edit 999")

    rows = listed(app)
    assert len(rows) == 1
    assert rows[0]["ID"] == first_row[0]["ID"]  # refreshed in place, not re-inserted
    assert rows[0]["EVENT_DATA"] == {"FIELDS": {"ID": 7}}
    stamped = datetime.fromisoformat(rows[0]["TIMESTAMP_X"]).timestamp()
    assert stamped >= before_last
    deal = result(app("crm.deal.get", id=7))
    assert deal["TITLE"] == "edit 999"
    assert abs(datetime.fromisoformat(deal["DATE_MODIFY"]).timestamp() - stamped) <= 1


def test_update_during_reservation_creates_a_second_row_that_survives_the_clear_of_the_first(emu, app):
    user_edit(emu, "deal", 3, TITLE="before reservation")
    reserved = result(app("event.offline.get", clear=0))
    process_id = reserved["process_id"]
    assert [event["EVENT_DATA"]["FIELDS"]["ID"] for event in reserved["events"]] == [3]

    user_edit(emu, "deal", 3, TITLE="while reserved")
    rows = listed(app)
    assert len(rows) == 2
    assert rows[0]["MESSAGE_ID"] == rows[1]["MESSAGE_ID"]
    assert [row["PROCESS_ID"] for row in rows] == [process_id, ""]

    assert result(app("event.offline.clear", process_id=process_id)) is True
    survivors = listed(app)
    assert [row["ID"] for row in survivors] == [rows[1]["ID"]]
    assert survivors[0]["PROCESS_ID"] == ""


def test_two_parallel_gets_receive_disjoint_rows(http):
    with run_emulator(limits=False, counts={"deal": 300}) as emu:
        token = emu.install_tokens()["access_token"]
        assert result(rest(http, emu, token, "event.bind", event="ONCRMDEALUPDATE", event_type="offline"))
        for deal_id in range(1, 301):
            user_edit(emu, "deal", deal_id, COMMENTS="bulk edit")
        received: list[list[int]] = [[], []]
        start = threading.Barrier(2)

        def drain(slot: int) -> None:
            with httpx.Client(timeout=30) as client:
                start.wait()
                while True:
                    answer = result(rest(client, emu, token, "event.offline.get", clear=0, limit=7))
                    if not answer["events"]:
                        return
                    received[slot].extend(int(event["ID"]) for event in answer["events"])

        workers = [threading.Thread(target=drain, args=(slot,)) for slot in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)

        assert received[0] and received[1]
        assert not set(received[0]) & set(received[1])
        assert len(received[0]) + len(received[1]) == 300
        assert {int(row["ID"]) for row in emu.queue()} == set(received[0]) | set(received[1])


def test_write_with_matching_auth_connector_enqueues_nothing(emu, tokens, http):
    token = tokens["access_token"]
    assert result(rest(http, emu, token, "event.bind", event="ONCRMDEALUPDATE", event_type="offline",
                       auth_connector="warehouse"))
    assert result(rest(http, emu, token, "crm.deal.update", id=2, fields={"TITLE": "write-back"},
                       auth_connector="warehouse")) is True
    assert emu.queue() == []

    # The same app writing without the key is another source: its change comes back.
    assert result(rest(http, emu, token, "crm.deal.update", id=2, fields={"TITLE": "plain"}))
    rows = emu.queue()
    assert [(row["CONNECTOR_ID"], row["EVENT_DATA"]) for row in rows] == [
        ("warehouse", {"FIELDS": {"ID": 2}})]


def test_app_write_without_connector_is_not_queued_for_its_handler_without_connector(emu, app):
    assert result(app("crm.deal.update", id=4, fields={"TITLE": "own write"})) is True
    assert emu.queue() == []
    user_edit(emu, "deal", 4, TITLE="a user's write")
    assert len(emu.queue()) == 1


def test_writes_by_another_app_and_by_webhooks_are_queued(emu, app, http):
    emu.register_app("local.other.app", "other-secret", scopes=["crm"])
    emu.install("local.other.app")
    other = emu.install_tokens(client_id="local.other.app", client_secret="other-secret")["access_token"]
    assert result(rest(http, emu, other, "crm.deal.update", id=5, fields={"TITLE": "other app"}))
    assert result(http.post(emu.webhook_url + "crm.deal.update", json={"id": 6, "fields": {"TITLE": "hook"}}))
    assert sorted(event["EVENT_DATA"]["FIELDS"]["ID"] for event in listed(app)) == [5, 6]


def test_each_connector_has_its_own_queue(emu, app):
    assert result(app("event.bind", event="ONCRMDEALUPDATE", event_type="offline", auth_connector="b"))
    user_edit(emu, "deal", 9, TITLE="seen by both")
    assert len(listed(app)) == 1
    assert len(result(app("event.offline.list", auth_connector="b"))) == 1
    drained = result(app("event.offline.get"))  # clear=1 on the no-connector queue only
    assert len(drained["events"]) == 1 and drained["process_id"] is None
    assert listed(app) == []
    assert len(result(app("event.offline.list", auth_connector="b"))) == 1


def test_add_update_and_delete_of_one_object_are_three_rows(emu, app):
    for event in ("ONCRMDEALADD", "ONCRMDEALDELETE"):
        assert result(app("event.bind", event=event, event_type="offline"))
    portal = emu.world.portal("default")
    deal_id = portal.crm.write("deal", "add", None, {"TITLE": "short-lived"}, UI_USER)
    user_edit(emu, "deal", deal_id, TITLE="renamed")
    portal.crm.write("deal", "delete", deal_id, None, UI_USER)
    rows = listed(app)
    assert [row["EVENT_NAME"] for row in rows] == ["ONCRMDEALADD", "ONCRMDEALUPDATE", "ONCRMDEALDELETE"]
    assert {row["EVENT_DATA"]["FIELDS"]["ID"] for row in rows} == {deal_id}
    assert len({row["MESSAGE_ID"] for row in rows}) == 3


def test_get_returns_exactly_six_keys_and_list_eight(emu, app):
    user_edit(emu, "deal", 1, TITLE="x")
    row = listed(app)[0]
    assert set(row) == {"ID", "TIMESTAMP_X", "EVENT_NAME", "EVENT_DATA", "EVENT_ADDITIONAL", "MESSAGE_ID",
                        "PROCESS_ID", "ERROR"}
    assert row["ERROR"] == "0" and row["PROCESS_ID"] == ""
    event = result(app("event.offline.get", clear=0))["events"][0]
    assert set(event) == {"ID", "TIMESTAMP_X", "EVENT_NAME", "EVENT_DATA", "EVENT_ADDITIONAL", "MESSAGE_ID"}
    assert isinstance(event["ID"], str) and event["EVENT_NAME"] == "ONCRMDEALUPDATE"
    assert event["EVENT_ADDITIONAL"] == {"user_id": "2"}
    assert len(event["MESSAGE_ID"]) == 32 and int(event["MESSAGE_ID"], 16) >= 0


def test_default_get_deletes_what_it_returns_and_names_no_process(emu, app):
    user_edit(emu, "deal", 1, TITLE="x")
    user_edit(emu, "deal", 2, TITLE="y")
    answer = result(app("event.offline.get", limit=1))
    assert answer["process_id"] is None and len(answer["events"]) == 1
    assert len(listed(app)) == 1


def test_get_with_process_id_rereads_the_reservation_without_reserving_more(emu, app):
    for deal_id in range(1, 6):
        user_edit(emu, "deal", deal_id, TITLE="x")
    first = result(app("event.offline.get", clear=0, limit=2))
    again = result(app("event.offline.get", clear=0, process_id=first["process_id"]))
    assert again["process_id"] == first["process_id"]
    assert again["events"] == first["events"]
    assert sum(row["PROCESS_ID"] == "" for row in listed(app)) == 3

    # With the default clear=1 the re-read removes the whole reserved batch.
    assert len(result(app("event.offline.get", process_id=first["process_id"]))["events"]) == 2
    assert len(listed(app)) == 3


def test_clear_with_ids_or_message_ids_acknowledges_only_those_rows(emu, app):
    for deal_id in (1, 2, 3):
        user_edit(emu, "deal", deal_id, TITLE="x")
    batch = result(app("event.offline.get", clear=0))
    first, second, third = batch["events"]
    assert result(app("event.offline.clear", process_id=batch["process_id"], id=[first["ID"]]))
    assert result(app("event.offline.clear", process_id=batch["process_id"],
                      message_id=[second["MESSAGE_ID"]]))
    assert [row["ID"] for row in listed(app)] == [third["ID"]]


def test_clear_rejects_message_ids_that_are_not_32_characters(emu, app):
    user_edit(emu, "deal", 1, TITLE="x")
    batch = result(app("event.offline.get", clear=0))
    response = app("event.offline.clear", process_id=batch["process_id"], message_id=["1"])
    assert response.status_code == 400
    # Bitrix spells this argument with three s (rest module source).
    assert response.json() == {"error": "ERROR_ARGUMENT",
                               "error_description": "Value must be array of MESSAGE_ID values",
                               "argument": "messsage_id"}
    assert len(listed(app)) == 1


def test_clear_needs_a_process_id_but_accepts_an_unknown_one(app):
    response = app("event.offline.clear")
    assert response.status_code == 400
    assert response.json()["error"] == "ERROR_ARGUMENT"
    assert response.json()["error_description"] == "Argument 'PROCESS_ID' is null or empty"
    assert result(app("event.offline.clear", process_id="no-such-process-00000000000000000")) is True


def test_clear_with_an_empty_process_id_is_refused_and_keeps_the_unreserved_rows(emu, app):
    user_edit(emu, "deal", 3, TITLE="waiting")
    response = app("event.offline.clear", process_id="")
    assert response.status_code == 400
    assert response.json()["argument"] == "PROCESS_ID"
    assert len(listed(app)) == 1


def test_failed_message_moves_to_the_error_lane_that_only_error_1_reads(emu, app):
    user_edit(emu, "deal", 1, TITLE="poison")
    user_edit(emu, "deal", 2, TITLE="fine")
    batch = result(app("event.offline.get", clear=0))
    poison = next(event for event in batch["events"] if event["EVENT_DATA"]["FIELDS"]["ID"] == 1)
    assert result(app("event.offline.error", process_id=batch["process_id"],
                      message_id=[poison["MESSAGE_ID"]]))
    assert result(app("event.offline.clear", process_id=batch["process_id"])) is True

    rows = listed(app)
    assert [(row["ID"], row["ERROR"], row["PROCESS_ID"]) for row in rows] == [(poison["ID"], "1", "")]
    assert result(app("event.offline.list", filter={"ERROR": 1}))[0]["ID"] == poison["ID"]
    assert result(app("event.offline.get", clear=0))["events"] == []
    lane = result(app("event.offline.get", clear=0, error=1))
    assert [event["ID"] for event in lane["events"]] == [poison["ID"]]
    assert result(app("event.offline.clear", process_id=lane["process_id"])) is True
    assert listed(app) == []


def test_error_drops_a_copy_queued_after_the_reservation(emu, app):
    user_edit(emu, "deal", 1, TITLE="first")
    batch = result(app("event.offline.get", clear=0))
    user_edit(emu, "deal", 1, TITLE="second")
    assert len(listed(app)) == 2
    message_id = batch["events"][0]["MESSAGE_ID"]
    assert result(app("event.offline.error", process_id=batch["process_id"], message_id=[message_id]))
    rows = listed(app)
    assert [(row["ID"], row["ERROR"], row["PROCESS_ID"]) for row in rows] == [
        (batch["events"][0]["ID"], "1", "")]


def test_later_changes_of_a_failed_object_stay_in_the_error_lane(emu, app):
    user_edit(emu, "deal", 1, TITLE="first")
    batch = result(app("event.offline.get", clear=0))
    assert result(app("event.offline.error", process_id=batch["process_id"],
                      message_id=[batch["events"][0]["MESSAGE_ID"]]))
    user_edit(emu, "deal", 1, TITLE="changed again")
    rows = listed(app)
    assert len(rows) == 1 and rows[0]["ERROR"] == "1"
    assert result(app("event.offline.get", clear=0))["events"] == []


def test_error_requires_an_array_of_message_ids(app):
    response = app("event.offline.error", process_id="p", message_id="abc")
    assert response.status_code == 400
    assert response.json()["argument"] == "message_id"


def test_list_pages_by_50_with_total_and_next(http):
    with run_emulator(limits=False, counts={"deal": 120}) as emu:
        token = emu.install_tokens()["access_token"]
        assert result(rest(http, emu, token, "event.bind", event="ONCRMDEALUPDATE", event_type="offline"))
        for deal_id in range(1, 121):
            user_edit(emu, "deal", deal_id, TITLE="x")
        first = rest(http, emu, token, "event.offline.list").json()
        assert len(first["result"]) == 50 and first["total"] == 120 and first["next"] == 50
        last = rest(http, emu, token, "event.offline.list", start=100).json()
        assert len(last["result"]) == 20 and last["total"] == 120 and "next" not in last
        newest = rest(http, emu, token, "event.offline.list", order={"ID": "DESC"}, filter={"<ID": 100},
                      start=-1).json()
        assert [int(row["ID"]) for row in newest["result"]][:2] == [99, 98]


def test_filters_and_orders_are_checked_like_the_rest_module(emu, app):
    user_edit(emu, "deal", 1, TITLE="x")
    cases = [
        ({"filter": {"!ID": 1}}, "Filter operation not allowed: !"),
        ({"filter": {"PROCESS_ID": ""}}, "Filter field not allowed: PROCESS_ID"),
        ({"filter": {"@ID": [1, 2]}}, "The value of an argument '@ID' has an invalid type"),
        ({"order": {"ID": "UP"}}, "Order direction should be one of {ASC|DESC}"),
        ({"limit": 0}, "Value must be positive integer"),
    ]
    for params, text in cases:
        response = app("event.offline.get", clear=0, **params)
        assert response.status_code == 400, params
        assert response.json()["error"] == "ERROR_ARGUMENT"
        assert response.json()["error_description"] == text
    matching = result(app("event.offline.get", clear=0, filter={">=ID": 1, "%EVENT_NAME": "dealupd"}))
    assert len(matching["events"]) == 1


def test_reservation_mode_needs_the_extended_feature(http):
    with run_emulator(limits=False, plan="standard") as emu:
        token = emu.install_tokens()["access_token"]
        assert result(rest(http, emu, token, "event.bind", event="ONCRMDEALUPDATE", event_type="offline"))
        user_edit(emu, "deal", 1, TITLE="x")
        response = rest(http, emu, token, "event.offline.get", clear=0)
        assert response.status_code == 403
        assert response.json() == {
            "error": "WRONG_LICENSE",
            "error_description":
                "This feature is not enabled for the current license: extended offline events handling",
        }
        assert len(result(rest(http, emu, token, "event.offline.get"))["events"]) == 1


def test_non_admins_get_access_denied(emu, http):
    emu.register_app("local.user.app", "user-secret", scopes=["crm"])
    emu.install("local.user.app", user_id=2)
    token = emu.install_tokens(client_id="local.user.app", client_secret="user-secret")["access_token"]
    for method, params in (("event.offline.get", {}), ("event.offline.list", {}),
                           ("event.offline.clear", {"process_id": "x"}),
                           ("event.offline.error", {"process_id": "x", "message_id": []})):
        response = rest(http, emu, token, method, **params)
        assert response.status_code == 403, method
        assert response.json() == {"error": "ACCESS_DENIED", "error_description": "Access denied!"}
    response = rest(http, emu, token, "event.bind", event="ONCRMDEALUPDATE", event_type="offline")
    assert response.status_code == 403
    assert response.json()["error_description"] == (
        "Access denied! Offline events binding requires administrator access rights")


def test_smart_process_item_events_carry_the_entity_type_id(emu, app, http):
    assert result(app("event.bind", event="ONCRMDYNAMICITEMADD", event_type="offline"))
    assert result(app("event.bind", event="ONCRMDYNAMICITEMUPDATE_128", event_type="offline"))
    added = result(http.post(emu.webhook_url + "crm.item.add", json={"entityTypeId": 128,
                                                                     "fields": {"title": "new item"}}))
    item_id = added["item"]["id"]
    result(http.post(emu.webhook_url + "crm.item.update",
                     json={"entityTypeId": 128, "id": item_id, "fields": {"title": "renamed"}}))
    rows = listed(app)
    assert [(row["EVENT_NAME"], row["EVENT_DATA"]) for row in rows] == [
        ("ONCRMDYNAMICITEMADD", {"FIELDS": {"ID": item_id, "ENTITY_TYPE_ID": 128}}),
        ("ONCRMDYNAMICITEMUPDATE_128", {"FIELDS": {"ID": item_id, "ENTITY_TYPE_ID": 128}}),
    ]


def test_a_deal_changed_through_crm_item_fires_the_deal_event(emu, app, http):
    assert result(app("event.bind", event="ONCRMDYNAMICITEMUPDATE", event_type="offline"))
    result(http.post(emu.webhook_url + "crm.item.update", json={"entityTypeId": 2, "id": 8,
                                                                "fields": {"title": "via item"}}))
    assert [row["EVENT_NAME"] for row in listed(app)] == ["ONCRMDEALUPDATE"]
