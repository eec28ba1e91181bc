"""The emulator's OAuth server beyond the token endpoint (emulator/auth.py, emulator/server.py):
its own ``app.info`` on ``server_endpoint`` with the real shape and errors (facts §7.5), and faults
injected into it (the token endpoint and ``app.info``) through the control API.
"""

from __future__ import annotations

import httpx
import pytest


def test_token_responses_name_the_oauth_servers_own_rest_root_as_server_endpoint(emu, tokens):
    assert tokens["server_endpoint"] == emu.oauth_server_endpoint == f"{emu.url}/oauth/rest/"
    assert tokens["client_endpoint"] == f"{emu.url}/rest/"


def test_app_info_answers_which_app_and_portal_a_token_belongs_to(http, emu, tokens):
    portal = emu.world.portal("default")
    response = http.get(f"{emu.oauth_server_endpoint}app.info", params={"auth": tokens["access_token"]})
    assert response.status_code == 200
    result = response.json()["result"]
    assert result == {
        "client_id": emu.client_id,
        "scope": "crm,department,user",
        "expires": tokens["expires"],
        "install": {
            "installed": True,
            "version": 1,
            "status": "L",
            "scope": "crm,department,user",
            "domain": portal.domain,
            "uri": "",
            "client_endpoint": f"{emu.url}/rest/",
            "member_id": portal.member_id,
            "member_type": "PORTAL",
        },
        "user_id": 1,
    }


def test_app_info_also_takes_the_token_in_a_post_body(http, emu, tokens):
    response = http.post(f"{emu.oauth_server_endpoint}app.info.json", data={"auth": tokens["access_token"]})
    assert response.json()["result"]["client_id"] == emu.client_id


def test_app_info_names_the_app_and_the_portal_of_each_token(http, emu):
    emu.create_portal("p2")
    emu.register_app("local.other.app", "other-secret")
    emu.install("local.other.app", portal="p2")
    other = emu.install_tokens("p2", "local.other.app", "other-secret")
    result = http.get(f"{emu.oauth_server_endpoint}app.info", params={"auth": other["access_token"]}).json()["result"]
    p2 = emu.world.portal("p2")
    assert result["client_id"] == "local.other.app"
    assert (result["install"]["member_id"], result["install"]["domain"], result["install"]["client_endpoint"]) == (
        p2.member_id, p2.domain, f"{emu.url}/p2/rest/")


@pytest.mark.parametrize(("auth", "code"), [
    ("0123456789abcdef0123456789abcdef", "invalid_token"),
    ("", "NO_AUTH_FOUND"),
])
def test_app_info_refuses_an_unknown_or_missing_token_with_401(http, emu, auth, code):
    response = http.get(f"{emu.oauth_server_endpoint}app.info", params={"auth": auth} if auth else None)
    assert response.status_code == 401
    assert response.json()["error"] == code


def test_app_info_refuses_an_expired_token_with_401_expired_token(http, emu, tokens):
    emu.expire_tokens()
    response = http.get(f"{emu.oauth_server_endpoint}app.info", params={"auth": tokens["access_token"]})
    assert response.status_code == 401
    assert response.json() == {"error": "expired_token", "error_description": "The access token provided has expired."}


def test_the_oauth_server_answers_no_other_method(http, emu, tokens):
    response = http.get(f"{emu.oauth_server_endpoint}crm.deal.list", params={"auth": tokens["access_token"]})
    assert response.status_code == 404
    assert response.json()["error"] == "ERROR_METHOD_NOT_FOUND"


def test_the_portals_own_app_info_keeps_the_portal_shape(http, emu, tokens):
    result = http.get(f"{emu.url}/rest/app.info", params={"auth": tokens["access_token"]}).json()["result"]
    assert result["CODE"] == emu.client_id and "install" not in result


def test_an_injected_fault_hits_app_info_on_the_oauth_server_and_not_the_portal(http, emu, tokens):
    emu.add_oauth_fault("app.info", "http_500", count=2)
    url, params = f"{emu.oauth_server_endpoint}app.info", {"auth": tokens["access_token"]}
    assert http.get(f"{emu.url}/rest/app.info", params=params).status_code == 200
    assert [http.get(url, params=params).status_code for _ in range(3)] == [500, 500, 200]
    assert emu.oauth_calls()["app.info"] == 3


def test_an_html_fault_on_app_info_answers_a_502_page(http, emu, tokens):
    emu.add_oauth_fault("*", "html", count=1)
    response = http.get(f"{emu.oauth_server_endpoint}app.info", params={"auth": tokens["access_token"]})
    assert response.status_code == 502 and "<html>" in response.text


def test_an_expire_token_fault_on_app_info_expires_the_presented_token(http, emu, tokens):
    emu.add_oauth_fault("app.info", "expire_token", count=1)
    response = http.get(f"{emu.oauth_server_endpoint}app.info", params={"auth": tokens["access_token"]})
    assert response.status_code == 401 and response.json()["error"] == "expired_token"


def test_a_token_endpoint_fault_before_leaves_the_refresh_token_usable(http, emu, tokens):
    emu.add_oauth_fault("token", "http_500", count=1)
    form = {"grant_type": "refresh_token", "client_id": emu.client_id, "client_secret": emu.client_secret,
            "refresh_token": tokens["refresh_token"]}
    assert http.post(emu.token_url, data=form).status_code == 500
    assert http.post(emu.token_url, data=form).json()["refresh_token"]


def test_a_dropped_token_answer_after_the_refresh_loses_the_rotated_pair(emu, tokens):
    emu.add_oauth_fault("token", "drop", count=1)
    form = {"grant_type": "refresh_token", "client_id": emu.client_id, "client_secret": emu.client_secret,
            "refresh_token": tokens["refresh_token"]}
    with httpx.Client(timeout=5) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(emu.token_url, data=form)
        again = client.post(emu.token_url, data=form)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_oauth_faults_are_listed_and_cleared_through_the_control_api(http, emu):
    emu.add_oauth_fault("token", "slow", delay_s=0.01, rate=0.5)
    listed = http.get(f"{emu.url}/_emulator/oauth/faults").json()["faults"]
    assert [(fault["method"], fault["kind"], fault["rate"]) for fault in listed] == [("token", "slow", 0.5)]
    emu.clear_oauth_faults()
    assert http.get(f"{emu.url}/_emulator/oauth").json()["faults"] == []


def test_an_unknown_oauth_fault_kind_is_refused(http, emu):
    response = http.post(f"{emu.url}/_emulator/oauth/faults", json={"method": "token", "kind": "nope"})
    assert response.status_code == 400 and "unknown fault kind" in response.json()["error"]
