"""Injected faults and latency (emulator/faults.py): each failure kind looks on the wire the way the real
failure does, fires by method, rate and count, and — for "after" faults — leaves the state change done
while the answer is lost, which is what at-least-once clients must survive.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest

from emulator.registry import rest_method

EXECUTED: list[str] = []


@rest_method("test.faults.touch", scope="crm")
def _touch(ctx, params):
    EXECUTED.append(params.get("tag", ""))
    return {"touched": len(EXECUTED)}


@pytest.fixture(autouse=True)
def _fresh_log():
    EXECUTED.clear()


def test_http_500_fault_answers_internal_server_error_without_running_the_method(http, emu):
    emu.add_fault("test.faults.touch", "http_500")
    response = http.get(emu.webhook_url + "test.faults.touch")
    assert response.status_code == 500 and response.json()["error"] == "INTERNAL_SERVER_ERROR"
    assert EXECUTED == []


def test_html_fault_answers_a_502_html_page(http, emu):
    emu.add_fault("test.faults.touch", "html")
    response = http.get(emu.webhook_url + "test.faults.touch")
    assert response.status_code == 502 and response.headers["content-type"].startswith("text/html")
    assert "<html>" in response.text and EXECUTED == []


def test_malformed_json_fault_runs_the_method_and_cuts_the_body(http, emu):
    emu.add_fault("test.faults.touch", "malformed_json")
    response = http.get(emu.webhook_url + "test.faults.touch")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(response.content)
    assert EXECUTED == [""]


def test_drop_fault_runs_the_method_then_closes_the_connection(emu):
    emu.add_fault("test.faults.touch", "drop")
    with httpx.Client(timeout=5) as client, pytest.raises(httpx.RemoteProtocolError):
        client.get(emu.webhook_url + "test.faults.touch")
    assert EXECUTED == [""]


def test_a_before_phase_drop_loses_the_request_without_running_it(emu):
    emu.add_fault("test.faults.touch", "drop", phase="before")
    with httpx.Client(timeout=5) as client, pytest.raises(httpx.RemoteProtocolError):
        client.get(emu.webhook_url + "test.faults.touch")
    assert EXECUTED == []


def test_slow_fault_delays_by_delay_s_and_counts_as_processing(http, emu):
    emu.add_fault("test.faults.touch", "slow", delay_s=0.3)
    started = time.monotonic()
    body = http.get(emu.webhook_url + "test.faults.touch").json()
    assert time.monotonic() - started >= 0.3 and body["time"]["processing"] >= 0.3


def test_expire_token_fault_answers_401_expired_token_and_refresh_recovers(http, emu, tokens):
    emu.add_fault("profile", "expire_token", count=1)
    response = http.get(f"{emu.url}/rest/profile", params={"auth": tokens["access_token"]})
    assert response.status_code == 401 and response.json()["error"] == "expired_token"
    assert http.get(f"{emu.url}/rest/app.info", params={"auth": tokens["access_token"]}).status_code == 401
    renewed = http.get(f"{emu.url}/oauth/token/", params={
        "grant_type": "refresh_token", "client_id": emu.client_id, "client_secret": emu.client_secret,
        "refresh_token": tokens["refresh_token"]}).json()
    assert http.get(f"{emu.url}/rest/profile", params={"auth": renewed["access_token"]}).status_code == 200


def test_a_fault_with_count_fires_that_many_times_then_stops(http, emu):
    emu.add_fault("test.faults.touch", "http_500", count=2)
    statuses = [http.get(emu.webhook_url + "test.faults.touch").status_code for _ in range(4)]
    assert statuses == [500, 500, 200, 200]


def test_a_fault_with_a_rate_fires_on_a_share_of_calls(http, emu):
    emu.add_fault("*", "http_500", rate=0.5)
    statuses = [http.get(emu.webhook_url + "test.faults.touch").status_code for _ in range(40)]
    assert 5 <= statuses.count(500) <= 35 and statuses.count(200) == 40 - statuses.count(500)


def test_wildcard_faults_hit_every_method_and_can_be_cleared(http, emu):
    emu.add_fault("*", "html")
    assert http.get(emu.webhook_url + "profile").status_code == 502
    assert http.get(emu.webhook_url + "feature.get?CODE=x").status_code == 502
    emu.clear_faults()
    assert http.get(emu.webhook_url + "profile").status_code == 200


def test_slow_faults_apply_to_batch_sub_calls_by_their_own_name(http, emu):
    emu.add_fault("test.faults.touch", "slow", delay_s=0.2)
    cmd = {"a": "test.faults.touch", "p": "profile"}
    body = http.post(emu.webhook_url + "batch", json={"cmd": cmd}).json()
    times = body["result"]["result_time"]
    assert times["a"]["processing"] >= 0.2 and times["p"]["processing"] < 0.1


def test_unknown_fault_kinds_are_refused_by_the_control_api(emu):
    response = emu.control.post("portals/default/faults", json={"method": "*", "kind": "meteor"})
    assert response.status_code == 400 and "unknown fault kind" in response.json()["error"]


def test_latency_delays_requests_without_blocking_others(http, emu):
    emu.patch_portal(latency_ms=300)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda _: httpx.get(emu.webhook_url + "profile").status_code, range(6)))
    elapsed = time.monotonic() - started
    assert statuses == [200] * 6 and 0.3 <= elapsed < 1.2
