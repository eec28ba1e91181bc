"""Several portals in one emulator process: the default one at the root, others under `/{name}/`, each
with its own plan, members, tokens, limits and statistics, sharing one OAuth server at `/oauth/token/`
(contract "URLs"; facts §8: marketplace apps use the same keys on every portal).
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit


def test_a_created_portal_is_listed_with_its_base_url(emu):
    info = emu.create_portal("acme", plan="standard")
    assert info["base_url"] == f"{emu.url}/acme" and info["plan"] == "standard"
    listed = {portal["name"]: portal for portal in emu.control.get("portals").json()}
    assert set(listed) == {"default", "acme"}
    assert listed["default"]["base_url"] == emu.url
    assert listed["acme"]["member_id"] != listed["default"]["member_id"]


def test_each_portal_answers_under_its_prefix_with_its_own_plan(http, emu):
    emu.create_portal("acme", plan="standard")
    emu._call("POST", "portals/acme/webhooks", {"user_id": 1, "code": "acmehook"})
    feature = {"CODE": "rest_offline_extended"}
    acme = http.get(f"{emu.url}/acme/rest/1/acmehook/feature.get", params=feature)
    assert acme.json()["result"]["value"] == "N"
    assert http.get(emu.webhook_url + "feature.get", params=feature).json()["result"]["value"] == "Y"
    assert http.get(f"{emu.url}/rest/1/acmehook/profile").status_code == 401


def test_one_app_installed_on_two_portals_gets_tokens_bound_to_each(http, emu):
    emu.create_portal("acme")
    emu.register_app("app.market.1", "market-secret", redirect_uri="https://app.example/oauth")
    default_tokens = emu.install("app.market.1")
    acme_tokens = emu.install("app.market.1", portal="acme")
    assert default_tokens["client_endpoint"] == f"{emu.url}/rest/"
    assert acme_tokens["client_endpoint"] == f"{emu.url}/acme/rest/"
    assert acme_tokens["member_id"] != default_tokens["member_id"]
    assert default_tokens["application_token"] != acme_tokens["application_token"]
    acme_call = http.get(f"{emu.url}/acme/rest/app.info", params={"auth": acme_tokens["access_token"]})
    assert acme_call.status_code == 200
    crossed = http.get(f"{emu.url}/rest/app.info", params={"auth": acme_tokens["access_token"]})
    assert crossed.status_code == 401 and crossed.json()["error"] == "invalid_token"


def test_authorize_on_a_prefixed_portal_names_that_portal_and_the_shared_token_server(http, emu):
    info = emu.create_portal("acme")
    emu.register_app("app.market.2", "market-secret", redirect_uri="https://app.example/oauth")
    emu.install("app.market.2", portal="acme")
    answer = http.get(f"{emu.url}/acme/oauth/authorize/", params={"client_id": "app.market.2"})
    query = {key: values[0] for key, values in parse_qs(urlsplit(answer.headers["location"]).query).items()}
    host = emu.url.split("://")[1]
    assert query["domain"] == f"{host}/acme" and query["member_id"] == info["member_id"]
    assert query["server_domain"] == host
    tokens = http.post(f"{emu.url}/oauth/token/", data={
        "grant_type": "authorization_code", "client_id": "app.market.2", "client_secret": "market-secret",
        "code": query["code"]}).json()
    assert tokens["client_endpoint"] == f"{emu.url}/acme/rest/" and tokens["member_id"] == info["member_id"]


def test_statistics_are_kept_per_portal(http, emu):
    emu.create_portal("acme")
    emu._call("POST", "portals/acme/webhooks", {"user_id": 1, "code": "acmehook"})
    emu.reset_stats()
    for _ in range(3):
        http.get(f"{emu.url}/acme/rest/1/acmehook/profile")
    assert emu.stats("acme")["http_requests"] == 3 and emu.stats()["http_requests"] == 0


def test_users_can_be_added_with_or_without_admin_rights(http, emu):
    emu._call("POST", "portals/default/users", {"id": 7, "name": "Grace Hopper", "is_admin": False})
    emu._call("POST", "portals/default/webhooks", {"user_id": 7, "code": "gracehook"})
    assert http.get(f"{emu.url}/rest/7/gracehook/user.admin").json()["result"] is False


def test_reserved_and_duplicate_portal_names_are_refused(emu):
    assert emu.control.post("portals", json={"name": "rest"}).status_code == 400
    assert emu.control.post("portals", json={"name": "default"}).status_code == 400
    assert emu.control.patch("portals/nowhere", json={"plan": "standard"}).status_code == 404


def test_paths_outside_any_portal_get_404(http, emu):
    assert http.get(f"{emu.url}/nowhere/else").status_code == 404
