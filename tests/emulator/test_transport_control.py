"""The control API and harness helpers everyone's tests lean on (contract "Control API", "Test harness"):
UI-user writes, ground truth, the raw offline queue, the activity generator, and how the transport
routes app-only, admin-only and licensed offline-event calls to the crm half.
"""

from __future__ import annotations

import time

from emulator.params import encode_query


def _offline_bind(http, emu, access_token, event="ONCRMDEALUPDATE"):
    response = http.post(f"{emu.url}/rest/event.bind", json={
        "auth": access_token, "event": event, "event_type": "offline"})
    assert response.json()["result"] is True


def test_a_ui_write_shows_in_the_truth_and_in_the_apps_offline_queue(http, emu, tokens):
    _offline_bind(http, emu, tokens["access_token"])
    deal_id = emu.truth("deal")[0]["id"]
    assert emu.write("deal", "update", id=deal_id, fields={"TITLE": "Changed by a user"}) == deal_id
    row = next(row for row in emu.truth("deal") if row["id"] == deal_id)
    assert row["fields"]["TITLE"] == "Changed by a user" and row["deleted"] is False
    queued = [r for r in emu.queue() if r["EVENT_NAME"] == "ONCRMDEALUPDATE"]
    assert len(queued) == 1 and queued[0]["APP_ID"] == emu.client_id
    fetched = http.post(f"{emu.url}/rest/event.offline.get", json={"auth": tokens["access_token"]}).json()
    assert [event["EVENT_DATA"]["FIELDS"]["ID"] for event in fetched["result"]["events"]] == [deal_id]


def test_deletes_leave_a_tombstone_in_the_truth(emu):
    deal_id = emu.write("deal", "add", fields={"TITLE": "Short-lived"})
    emu.write("deal", "delete", id=deal_id)
    row = next(row for row in emu.truth("deal") if row["id"] == deal_id)
    assert row["deleted"] is True and row["fields"] is None


def test_unknown_entities_and_records_are_404_on_the_control_api(emu):
    assert emu.control.get("portals/default/truth/spaceship").status_code == 404
    missing = emu.control.post("portals/default/crm/deal", json={"op": "update", "id": 10**9, "fields": {}})
    assert missing.status_code == 404


def test_the_activity_generator_starts_reports_and_stops(emu):
    emu.start_activity(rate_per_s=200, seed=3)
    time.sleep(0.3)
    stats = emu.stop_activity()
    assert sum(sum(ops.values()) for ops in stats.values()) > 0
    assert emu.control.get("portals/default/activity").json()["running"] is False


def test_webhook_calling_event_offline_get_gets_403_wrong_auth_type(http, emu):
    response = http.post(emu.webhook_url + "event.offline.get")
    assert response.status_code == 403 and response.json()["error"] == "WRONG_AUTH_TYPE"


def test_a_non_admin_app_user_gets_403_access_denied_on_offline_events(http, emu):
    emu.install(emu.client_id, user_id=2)
    tokens = emu.install_tokens()
    response = http.post(f"{emu.url}/rest/event.offline.get", json={"auth": tokens["access_token"]})
    assert response.status_code == 403 and response.json()["error"] == "ACCESS_DENIED"


def test_reservation_without_the_licence_gets_403_wrong_license(http, emu, tokens):
    emu.patch_portal(plan="standard")
    body = {"auth": tokens["access_token"], "clear": 0}
    response = http.post(f"{emu.url}/rest/event.offline.get", json=body)
    assert response.status_code == 403 and response.json()["error"] == "WRONG_LICENSE"


def test_a_batch_keyset_scan_over_real_deals_returns_every_deal_once(http):
    from emulator.testing import run_emulator

    with run_emulator(limits=False, deals=230) as emu:
        cmd = {}
        for index in range(5):
            cursor = 0 if index == 0 else f"$result[s{index - 1}][49][ID]"
            cmd[f"s{index}"] = "crm.deal.list?" + encode_query(
                {"order": {"ID": "ASC"}, "filter": {">ID": cursor}, "select": ["ID"], "start": -1})
        result = http.post(emu.webhook_url + "batch", json={"cmd": cmd}).json()["result"]
        ids = [int(row["ID"]) for key in cmd for row in result["result"][key]]
        assert ids == sorted(row["id"] for row in emu.truth("deal"))
        assert result["result_total"] == [] and result["result_next"] == []  # start=-1 counts nothing


def test_the_truth_counts_writes_per_object_app_and_connector(http, emu, tokens):
    # Loop suppression is keyed on who wrote and with which connector (facts §2.12): the ground truth
    # says exactly that, so a test can prove a write-back wrote each object once, with its key.
    lead_id = emu.truth("lead")[0]["id"]
    emu.reset_writes()
    emu.write("lead", "update", id=lead_id, fields={"TITLE": "a user"})
    http.post(f"{emu.webhook_url}crm.lead.update", json={"id": lead_id, "fields": {"TITLE": "a webhook"}})
    for title in ("app, no key", "app, keyed", "app, keyed again"):
        connector = {} if title == "app, no key" else {"auth_connector": "warehouse"}
        answer = http.post(f"{emu.url}/rest/crm.lead.update", json={
            "auth": tokens["access_token"], "id": lead_id, "fields": {"TITLE": title}, **connector})
        assert answer.json()["result"] is True

    expected = [{"entity": "lead", "id": lead_id, "op": "update", "client_id": "", "connector": "", "count": 2},
                {"entity": "lead", "id": lead_id, "op": "update", "client_id": emu.client_id, "connector": "",
                 "count": 1},
                {"entity": "lead", "id": lead_id, "op": "update", "client_id": emu.client_id,
                 "connector": "warehouse", "count": 2}]
    assert emu.writes("lead") == expected
    assert http.get(f"{emu.url}/_emulator/portals/default/truth/lead").json()["writes"] == expected
    assert emu.writes("deal") == []
    emu.reset_writes()
    assert emu.writes() == []
