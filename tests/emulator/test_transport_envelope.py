"""The REST envelope and request decoding, over loopback with plain httpx (facts §1.1-§1.4).

Clients parse these bytes: `result`, lifted `total`/`next`, the `time` block, and error bodies without
`time`. Every request style a client may use (JSON, form, GET, `.json` suffix, any method-name case)
must reach the handler with the same params.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from emulator.registry import Page, rest_method

ISO_WITH_OFFSET = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")


@rest_method("test.envelope.echo", scope="crm")
def _echo(ctx, params):
    return params


@rest_method("test.envelope.page", scope="crm")
def _page(ctx, params):
    start = int(params.get("start", 0))
    return Page(items=[{"ID": str(i)} for i in range(start, start + 2)], total=5, next=start + 2)


def test_success_carries_result_and_the_full_time_block(http, emu):
    body = http.get(emu.webhook_url + "feature.get", params={"CODE": "rest_offline_extended"}).json()
    assert body["result"] == {"value": "Y"}
    time_block = body["time"]
    assert set(time_block) >= {"start", "finish", "duration", "processing", "date_start", "date_finish",
                               "operating"}
    assert time_block["finish"] >= time_block["start"]
    assert abs(time_block["duration"] - (time_block["finish"] - time_block["start"])) < 1e-6
    assert 0 <= time_block["processing"] <= time_block["duration"]
    assert ISO_WITH_OFFSET.match(time_block["date_start"])
    assert ISO_WITH_OFFSET.match(time_block["date_finish"])
    assert "operating_reset_at" not in time_block  # only present when non-null (facts §1.3)


def test_time_block_dates_carry_the_portals_offset_like_its_crm_dates(http, emu):
    body = http.post(emu.webhook_url + "crm.deal.get", json={"id": 1}).json()
    crm_offset = datetime.fromisoformat(body["result"]["DATE_MODIFY"]).utcoffset()
    started = datetime.fromisoformat(body["time"]["date_start"])
    finished = datetime.fromisoformat(body["time"]["date_finish"])
    assert started.utcoffset() == finished.utcoffset() == crm_offset == timedelta(hours=3)
    assert started.timestamp() == int(body["time"]["start"])
    assert finished.timestamp() == int(body["time"]["finish"])
    batch = http.post(emu.webhook_url + "batch", json={"cmd": {"d": "crm.deal.get?id=1"}}).json()
    assert datetime.fromisoformat(batch["result"]["result_time"]["d"]["date_start"]).utcoffset() == crm_offset


def test_response_is_json_with_charset(http, emu):
    response = http.get(emu.webhook_url + "profile")
    assert response.headers["content-type"] == "application/json; charset=utf-8"


def test_page_results_lift_total_and_next_to_the_top_level(http, emu):
    body = http.get(emu.webhook_url + "test.envelope.page", params={"start": 2}).json()
    assert body["result"] == [{"ID": "2"}, {"ID": "3"}]
    assert body["total"] == 5 and body["next"] == 4


def test_method_names_are_case_insensitive_and_accept_the_json_suffix(http, emu):
    for name in ("feature.get", "FEATURE.GET.json", "Feature.Get.json"):
        assert http.get(emu.webhook_url + name, params={"CODE": "x"}).json()["result"] == {"value": "N"}


def test_json_form_and_query_bodies_decode_to_the_same_params(http, emu):
    params = {"filter": {">ID": "5", "@ID": ["1", "2"]}, "select": ["ID", "TITLE"]}
    url = emu.webhook_url + "test.envelope.echo"
    as_json = http.post(url, json=params).json()["result"]
    form = "filter%5B%3EID%5D=5&filter[@ID][]=1&filter[@ID][]=2&select[]=ID&select[]=TITLE"
    as_form = http.post(url, content=form,
                        headers={"content-type": "application/x-www-form-urlencoded"}).json()["result"]
    query = "?filter[%3EID]=5&filter[@ID][0]=1&filter[@ID][1]=2&select[0]=ID&select[1]=TITLE"
    as_query = http.get(url + query).json()["result"]
    as_multipart = http.post(url, files={"filter[>ID]": (None, "5"), "filter[@ID][]": (None, "1"),
                                          "select[]": (None, "ID")}).json()["result"]
    assert as_json == as_form == as_query == params
    assert as_multipart == {"filter": {">ID": "5", "@ID": ["1"]}, "select": ["ID"]}


def test_body_params_override_query_params_and_auth_keys_are_removed(http, emu, tokens):
    url = f"{emu.url}/rest/test.envelope.echo?a=query&b=query&auth={tokens['access_token']}"
    assert http.post(url, data={"b": "body"}).json()["result"] == {"a": "query", "b": "body"}


def test_errors_have_code_description_and_no_time_block(http, emu):
    response = http.get(emu.webhook_url + "feature.get")
    assert response.status_code == 400
    assert response.json() == {"error": "CODE_EMPTY", "error_description": "CODE can't be empty"}


def test_unknown_method_gives_404_error_method_not_found(http, emu):
    response = http.get(emu.webhook_url + "crm.no.such.method")
    assert response.status_code == 404
    assert response.json() == {"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"}


def test_feature_get_answers_from_the_plan(http, emu):
    emu.patch_portal(plan="standard")
    for code in ("rest_offline_extended", "rest_auth_connector"):
        answer = http.get(emu.webhook_url + "feature.get", params={"CODE": code})
        assert answer.json()["result"] == {"value": "N"}
    emu.patch_portal(plan="enterprise")
    for code in ("rest_offline_extended", "rest_auth_connector"):
        answer = http.get(emu.webhook_url + "feature.get", params={"code": code})
        assert answer.json()["result"] == {"value": "Y"}


def test_app_info_describes_the_calling_app(http, emu, tokens):
    info = http.post(f"{emu.url}/rest/app.info", data={"auth": tokens["access_token"]}).json()["result"]
    assert info["CODE"] == emu.client_id and info["STATUS"] == "L" and info["INSTALLED"] is True
    assert {"LICENSE", "LICENSE_TYPE", "LICENSE_FAMILY", "PAYMENT_EXPIRED"} <= set(info)


def test_user_and_profile_methods_name_the_caller(http, emu, tokens):
    auth = {"auth": tokens["access_token"]}
    assert http.post(f"{emu.url}/rest/profile", data=auth).json()["result"]["ADMIN"] is True
    assert http.post(f"{emu.url}/rest/user.current", data=auth).json()["result"]["ID"] == "1"
    assert http.post(f"{emu.url}/rest/user.admin", data=auth).json()["result"] is True
    assert http.post(f"{emu.url}/rest/scope", data=auth).json()["result"] == ["crm", "department", "user"]
    assert "feature.get" in http.post(f"{emu.url}/rest/methods", data=auth).json()["result"]
