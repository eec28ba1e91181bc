"""Authentication as Bitrix24 answers it: webhooks, OAuth tokens, the code flow, refresh rotation, the
install callback, and each documented failure with its HTTP status (facts §1.5, §7, §10.2).

The connector's token handling (refresh on 401 expired_token, persist the rotated pair) is only as
good as the emulator's imitation of these answers.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

import emulator.auth
from emulator.outbound import wait_idle
from emulator.params import decode_query
from emulator.registry import rest_method
from emulator.testing import run_emulator


@rest_method("test.auth.scoped", scope="crm")
def _scoped(ctx, params):
    return True


def _call(http, emu, method, access_token, **params):
    return http.post(f"{emu.url}/rest/{method}", data={"auth": access_token, **params})


# -- webhooks ---------------------------------------------------------------------------------------

def test_webhook_acts_as_its_user(http, emu):
    assert http.get(emu.webhook_url + "profile.json").json()["result"]["ID"] == 1


def test_webhook_with_a_wrong_code_gets_401_invalid_credentials(http, emu):
    response = http.get(f"{emu.url}/rest/1/not-the-code/profile")
    assert response.status_code == 401
    assert response.json() == {"error": "INVALID_CREDENTIALS",
                               "error_description": "Invalid request credentials"}


def test_webhook_under_another_users_id_gets_401_invalid_credentials(http, emu):
    assert http.get(f"{emu.url}/rest/2/emulatorwebhook/profile").status_code == 401


def test_webhook_without_the_scope_gets_401_insufficient_scope(http, emu):
    emu._call("POST", "portals/default/webhooks", {"user_id": 2, "code": "useronly", "scopes": ["user"]})
    response = http.get(f"{emu.url}/rest/2/useronly/test.auth.scoped")
    assert response.status_code == 401
    assert response.json()["error"] == "insufficient_scope"
    assert "webhook token" in response.json()["error_description"]


# -- OAuth tokens -----------------------------------------------------------------------------------

def test_token_may_come_as_auth_access_token_or_bearer_header(http, emu, tokens):
    token = tokens["access_token"]
    assert http.get(f"{emu.url}/rest/profile", params={"auth": token}).status_code == 200
    assert http.post(f"{emu.url}/rest/profile", json={"access_token": token}).status_code == 200
    bearer = {"Authorization": f"Bearer {token}"}
    assert http.get(f"{emu.url}/rest/profile", headers=bearer).status_code == 200


def test_no_token_gives_401_no_auth_found(http, emu):
    response = http.get(f"{emu.url}/rest/profile")
    assert response.status_code == 401 and response.json()["error"] == "NO_AUTH_FOUND"


def test_unknown_token_gives_401_invalid_token(http, emu):
    response = _call(http, emu, "profile", "0" * 64)
    assert response.status_code == 401 and response.json()["error"] == "invalid_token"


def test_expired_token_gives_401_expired_token(http, emu, tokens):
    assert _call(http, emu, "profile", tokens["access_token"]).status_code == 200
    assert emu.expire_tokens(client_id=emu.client_id) >= 1
    response = _call(http, emu, "profile", tokens["access_token"])
    assert response.status_code == 401
    assert response.json() == {"error": "expired_token",
                               "error_description": "The access token provided has expired."}


def test_access_tokens_expire_after_the_configured_lifetime(http):
    with run_emulator(limits=False, token_ttl=1) as emu:
        tokens = emu.install_tokens()
        assert tokens["expires_in"] == 1
        assert _call(http, emu, "profile", tokens["access_token"]).status_code == 200
        time.sleep(1.1)
        assert _call(http, emu, "profile", tokens["access_token"]).json()["error"] == "expired_token"


def test_token_response_has_the_documented_fields(emu, tokens):
    assert set(tokens) == {"access_token", "refresh_token", "expires", "expires_in", "scope", "domain",
                           "server_endpoint", "status", "client_endpoint", "member_id", "user_id"}
    assert tokens["expires_in"] == 3600 and abs(tokens["expires"] - time.time() - 3600) < 5
    assert tokens["client_endpoint"] == f"{emu.url}/rest/"
    assert tokens["server_endpoint"] == f"{emu.url}/oauth/rest/"  # the OAuth server, not the portal (facts §7.5)
    assert tokens["scope"] == "crm,department,user" and tokens["status"] == "L" and tokens["user_id"] == 1


def test_refresh_rotates_and_the_old_refresh_token_dies(http, emu, tokens):
    refresh = {"grant_type": "refresh_token", "client_id": emu.client_id, "client_secret": emu.client_secret,
               "refresh_token": tokens["refresh_token"]}
    first = http.get(f"{emu.url}/oauth/token/", params=refresh)
    assert first.status_code == 200
    renewed = first.json()
    assert renewed["refresh_token"] != tokens["refresh_token"]
    assert renewed["access_token"] != tokens["access_token"]
    assert _call(http, emu, "profile", renewed["access_token"]).status_code == 200
    again = http.post(f"{emu.url}/oauth/token/", data=refresh)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    rotated = http.post(f"{emu.url}/oauth/token/",
                        data={**refresh, "refresh_token": renewed["refresh_token"]})
    assert rotated.status_code == 200


def test_refresh_after_expiry_brings_the_app_back(http, emu, tokens):
    emu.expire_tokens()
    assert _call(http, emu, "profile", tokens["access_token"]).json()["error"] == "expired_token"
    renewed = http.get(f"{emu.url}/oauth/token/", params={
        "grant_type": "refresh_token", "client_id": emu.client_id, "client_secret": emu.client_secret,
        "refresh_token": tokens["refresh_token"]}).json()
    assert _call(http, emu, "profile", renewed["access_token"]).status_code == 200


def test_token_endpoint_rejects_a_wrong_client_secret(http, emu, tokens):
    response = http.get(f"{emu.url}/oauth/token/", params={
        "grant_type": "refresh_token", "client_id": emu.client_id, "client_secret": "wrong",
        "refresh_token": tokens["refresh_token"]})
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


# -- the authorization-code flow --------------------------------------------------------------------

def test_authorize_redirects_with_code_and_portal_details_then_the_code_buys_tokens(http, emu):
    emu.register_app("app.flow.1", "flow-secret", redirect_uri="https://app.example/callback?x=1")
    emu.install("app.flow.1", user_id=2)
    answer = http.get(f"{emu.url}/oauth/authorize/", params={"client_id": "app.flow.1", "state": "s-42"})
    assert answer.status_code == 302
    location = urlsplit(answer.headers["location"])
    assert location.netloc == "app.example" and location.path == "/callback"
    query = {key: values[0] for key, values in parse_qs(location.query).items()}
    assert query["x"] == "1" and query["state"] == "s-42"
    assert query["domain"] == emu.url.split("://")[1]
    assert query["server_domain"] == emu.url.split("://")[1]
    assert query["scope"] == "crm,department,user" and len(query["member_id"]) == 32
    exchange = {"grant_type": "authorization_code", "client_id": "app.flow.1", "client_secret": "flow-secret",
                "code": query["code"]}
    tokens = http.get(f"{emu.url}/oauth/token/", params=exchange).json()
    assert tokens["user_id"] == 2 and tokens["status"] == "F"
    as_user_2 = http.get(f"{emu.url}/rest/user.admin", params={"auth": tokens["access_token"]})
    assert as_user_2.json()["result"] is False
    reused = http.get(f"{emu.url}/oauth/token/", params=exchange)
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"


def test_authorize_without_redirect_uri_returns_json(http, emu):
    answer = http.get(f"{emu.url}/oauth/authorize/", params={"client_id": emu.client_id})
    assert answer.status_code == 200 and set(answer.json()) == {"code", "domain", "member_id", "scope",
                                                                 "server_domain"}


def test_authorization_codes_live_thirty_seconds(http, emu, monkeypatch):
    monkeypatch.setattr(emulator.auth, "CODE_TTL_S", 0.2)
    code = http.get(f"{emu.url}/oauth/authorize/", params={"client_id": emu.client_id}).json()["code"]
    time.sleep(0.3)
    response = http.get(f"{emu.url}/oauth/token/", params={
        "grant_type": "authorization_code", "client_id": emu.client_id, "client_secret": emu.client_secret,
        "code": code})
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_authorize_for_an_app_not_installed_on_the_portal_fails(http, emu):
    emu.register_app("app.not.installed", "secret")
    answer = http.get(f"{emu.url}/oauth/authorize/", params={"client_id": "app.not.installed"})
    assert answer.status_code == 400 and answer.json()["error"] == "NOT_INSTALLED"


# -- install callback -------------------------------------------------------------------------------

class _Recorder(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str]]] = []

    def do_POST(self):
        length = int(self.headers["content-length"])
        _Recorder.received.append((self.headers["content-type"], self.rfile.read(length).decode()))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def app_handler():
    _Recorder.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/install", _Recorder.received
    server.shutdown()
    server.server_close()


def test_install_callback_reaches_the_app_handler_form_encoded(http, emu, app_handler):
    url, received = app_handler
    emu.register_app("app.with.handler", "handler-secret", handler_url=url)
    answer = emu.install("app.with.handler")
    assert wait_idle() and len(received) == 1
    content_type, body = received[0]
    assert content_type == "application/x-www-form-urlencoded"
    assert "auth%5Baccess_token%5D=" in body  # PHP brackets, percent-encoded like http_build_query
    payload = decode_query(body)
    assert payload["event"] == "ONAPPINSTALL" and payload["data"]["INSTALLED"] == "Y"
    auth = payload["auth"]
    assert auth["application_token"] == answer["application_token"]
    assert auth["domain"] == emu.url.split("://")[1] and auth["client_endpoint"] == f"{emu.url}/rest/"
    assert set(auth) >= {"access_token", "refresh_token", "expires_in", "scope", "server_endpoint", "status",
                         "member_id"}
    assert http.post(f"{emu.url}/rest/app.info", data={"auth": auth["access_token"]}).json()["result"][
        "CODE"] == "app.with.handler"


def test_serving_with_an_app_handler_url_posts_the_install_callback_at_start(app_handler):
    url, received = app_handler
    with run_emulator(limits=False, app_handler_url=url) as emu:
        assert wait_idle() and len(received) == 1
        assert decode_query(received[0][1])["auth"]["member_id"] == emu.world.portal("default").member_id


def test_reinstall_keeps_the_application_token(emu):
    assert emu.install(emu.client_id)["application_token"] == emu.install(emu.client_id)["application_token"]


# -- licence ------------------------------------------------------------------------------------------

def test_auth_connector_without_the_licence_gets_403_wrong_license(http, emu, tokens):
    assert _call(http, emu, "profile", tokens["access_token"], auth_connector="c1").status_code == 200
    emu.patch_portal(plan="standard")
    response = _call(http, emu, "profile", tokens["access_token"], auth_connector="c1")
    assert response.status_code == 403
    assert response.json() == {"error": "WRONG_LICENSE", "error_description":
                               "This feature is not enabled for the current license: auth_connector"}
