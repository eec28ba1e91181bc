"""The two cloud limits (facts §6): the per-portal leaky bucket (503 QUERY_LIMIT_EXCEEDED) and the
per-(app, method) operating-time budget (429 OPERATION_TIME_LIMIT with `operating_reset_at`).

The connector's throttle mirrors both, so the emulator must enforce them with real clocks. The budget
is exercised fast by a tiny operating limit and the "slow" fault (its sleep counts as processing).
"""

from __future__ import annotations

import time

from emulator.registry import rest_method
from emulator.testing import run_emulator


@rest_method("test.limits.work", scope="crm")
def _work(ctx, params):
    return True


def _burst(http, url, calls):
    return [http.get(url).status_code for _ in range(calls)]


def test_sixty_rapid_calls_meet_503_and_the_bucket_drains_at_two_per_second(http, limited_emu):
    url = limited_emu.webhook_url + "profile"
    started = time.monotonic()
    statuses = _burst(http, url, 60)
    burst_s = time.monotonic() - started
    # The first 50 fill the bucket; after that only what drained meanwhile (2/s) gets through.
    assert statuses[:50] == [200] * 50
    assert statuses.count(200) <= 50 + 2 * burst_s + 1 and statuses.count(503) >= 8
    rejected = http.get(url)
    assert rejected.status_code == 503
    assert rejected.json() == {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}
    idle_from = time.monotonic()
    time.sleep(2.5)
    admitted = _burst(http, url, 10).count(200)
    window_s = time.monotonic() - idle_from
    assert 4 <= admitted <= 2 * window_s + 1


def test_rejected_requests_are_counted_per_status_and_method(http, limited_emu):
    _burst(http, limited_emu.webhook_url + "profile", 55)
    stats = limited_emu.stats()
    assert stats["http_requests"] == 55
    assert stats["status"]["503"] == stats["methods"]["profile"]["status_503"] >= 4


def test_the_bucket_is_per_portal(http, limited_emu):
    limited_emu.create_portal("other")
    limited_emu._call("POST", "portals/other/webhooks", {"user_id": 1, "code": "otherhook"})
    assert _burst(http, limited_emu.webhook_url + "profile", 55).count(503) >= 4
    assert _burst(http, f"{limited_emu.url}/other/rest/1/otherhook/profile", 10) == [200] * 10


def test_bucket_shape_follows_the_plan_and_can_be_configured(http, limited_emu):
    enterprise = limited_emu.patch_portal(plan="enterprise")["limits"]
    assert (enterprise["burst"], enterprise["drain_per_s"]) == (250, 5.0)
    limits = limited_emu.patch_portal(limits={"burst": 5, "drain_per_s": 0.5})["limits"]
    assert limits["burst"] == 5 and limits["drain_per_s"] == 0.5
    assert _burst(http, limited_emu.webhook_url + "profile", 7)[-2:] == [503, 503]


def test_limits_can_be_switched_off(http, limited_emu):
    limited_emu.patch_portal(limits={"enabled": False})
    assert set(_burst(http, limited_emu.webhook_url + "profile", 70)) == {200}


def _slow_budget(emu, limit_s=0.25, delay_s=0.15):
    emu.patch_portal(limits={"operating_limit_s": limit_s})
    emu.add_fault("test.limits.work", "slow", delay_s=delay_s)


def test_forced_429_reports_operating_reset_at(http, limited_emu):
    _slow_budget(limited_emu)
    url = limited_emu.webhook_url + "test.limits.work"
    first = http.get(url).json()["time"]
    assert first["processing"] >= 0.15 and 0.15 <= first["operating"] < 0.25
    assert abs(first["operating_reset_at"] - (first["start"] + 600)) <= 2
    second = http.get(url).json()["time"]
    assert second["operating"] >= 0.3 and second["operating_reset_at"] == first["operating_reset_at"]
    blocked = http.get(url)
    assert blocked.status_code == 429
    assert blocked.json() == {"error": "OPERATION_TIME_LIMIT",
                              "error_description": "Method is blocked due to operation time limit."}
    assert limited_emu.stats()["methods"]["test.limits.work"]["status_429"] == 1


def test_a_blocked_method_leaves_other_methods_and_other_callers_alone(http, limited_emu):
    _slow_budget(limited_emu)
    url = limited_emu.webhook_url + "test.limits.work"
    http.get(url)
    http.get(url)
    assert http.get(url).status_code == 429
    assert http.get(limited_emu.webhook_url + "profile").status_code == 200
    tokens = limited_emu.install_tokens()
    assert http.get(f"{limited_emu.url}/rest/test.limits.work", params={"auth": tokens["access_token"]}
                    ).status_code == 200


def test_fast_calls_never_consume_the_budget(http, limited_emu):
    for _ in range(5):
        time_block = http.get(limited_emu.webhook_url + "test.limits.work").json()["time"]
    assert time_block["operating"] == 0 and "operating_reset_at" not in time_block


def test_batch_is_not_charged_but_each_sub_call_is_under_its_own_name(http, limited_emu):
    _slow_budget(limited_emu, limit_s=100)
    cmd = {"a": "test.limits.work", "b": "test.limits.work"}
    body = http.post(limited_emu.webhook_url + "batch", json={"cmd": cmd}).json()
    assert body["time"]["operating"] == 0 and body["time"]["processing"] >= 0.3
    assert body["result"]["result_time"]["b"]["operating"] >= 0.3
    methods = limited_emu.stats()["methods"]
    assert methods["batch"]["operating_s"] == 0 and methods["test.limits.work"]["operating_s"] >= 0.3


def test_charging_batch_itself_can_be_switched_on(http, limited_emu):
    _slow_budget(limited_emu, limit_s=100)
    limited_emu.patch_portal(limits={"charge_batch": True})
    body = http.post(limited_emu.webhook_url + "batch", json={"cmd": {"a": "test.limits.work"}}).json()
    assert body["time"]["operating"] >= 0.15
    assert limited_emu.stats()["methods"]["batch"]["operating_s"] >= 0.15


def test_a_blocked_method_inside_a_batch_fails_only_that_sub_call(http, limited_emu):
    _slow_budget(limited_emu)
    cmd = {f"w{i}": "test.limits.work" for i in range(3)} | {"p": "profile"}
    result = http.post(limited_emu.webhook_url + "batch", json={"cmd": cmd}).json()["result"]
    assert set(result["result"]) == {"w0", "w1", "p"}
    assert result["result_error"]["w2"]["error"] == "OPERATION_TIME_LIMIT"


def test_operating_limit_is_off_with_limits_off(http):
    with run_emulator(limits=False) as emu:
        _slow_budget(emu, delay_s=0.15)
        statuses = _burst(http, emu.webhook_url + "test.limits.work", 3)
    assert statuses == [200, 200, 200]
