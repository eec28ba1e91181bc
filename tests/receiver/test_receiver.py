"""The app's receiver over loopback, fed by the emulator's real install callback and pushes.

Under test: an install stores the portal and its tokens and binds the offline events plus the
ONOFFLINEEVENT push; a push from the portal becomes a signal for the sensor; anything that does not
carry the portal's application_token is refused and records nothing; an uninstall is recorded.
Every install is verified with the emulator's OAuth server (its app.info, facts §7.5): forged installs
(made-up tokens for a known member_id, an address the caller controls, another app's token) are
refused with nothing changed and no request to any address the caller named; an OAuth server fault
gets 503 and the portal's retry succeeds; the optional domain allow-list refuses before any call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from connectors.bitrix24 import Bitrix24Client, InstallVerifier, OAuthApp
from connectors.bitrix24.install_check import server_endpoint_for
from connectors.receiver import ReceiverSettings, create_app, portal_key
from connectors.receiver.__main__ import allowed_domains
from connectors.receiver.binding import bind_portal
from connectors.state import Portal, PortalStatus, StateStore, open_state_store
from emulator.events import Origin
from emulator.outbound import wait_idle
from emulator.testing import ThreadEmulator, run_emulator
from pipelines.demo import free_port

OTHER_APP = ("local.other.app", "other-secret")


@pytest.fixture
def emu() -> Iterator[ThreadEmulator]:
    with run_emulator(limits=False) as running:
        yield running


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateStore]:
    with open_state_store(tmp_path / "state.sqlite3") as store:
        yield store


@contextmanager
def serving_receiver(emu: ThreadEmulator, state: StateStore, *, server_endpoint: str | None = None,
                     allowed: frozenset[str] | None = None) -> Iterator[str]:
    """The receiver on a free loopback port, verifying installs with the emulator's OAuth server."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app_keys = OAuthApp(emu.client_id, emu.client_secret, token_url=emu.token_url)
    verifier = InstallVerifier(app_keys, server_endpoint or emu.oauth_server_endpoint)

    def on_install(portal: str, settings: ReceiverSettings) -> None:
        with Bitrix24Client(app_keys.session(portal, state.tokens)) as client:
            bind_portal(client, "b24wh", f"{settings.public_url}/events", settings.min_timeout_s)

    settings = ReceiverSettings(url, min_timeout_s=0, allowed_domains=allowed)
    server = uvicorn.Server(uvicorn.Config(create_app(state, settings, verifier, on_install),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def receiver(emu: ThreadEmulator, state: StateStore) -> Iterator[str]:
    with serving_receiver(emu, state) as url:
        yield url


class Listener:
    """A plain HTTP server that records every request it gets (the address a forger names)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                requests.append((self.command, self.path))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"result": {}}')

            do_GET = do_POST = _record

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()


@pytest.fixture
def listener() -> Iterator[Listener]:
    running = Listener()
    yield running
    running.server.shutdown()
    running.server.server_close()


def eventually(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def installed(emu: ThreadEmulator, receiver: str) -> str:
    emu.register_app(emu.client_id, emu.client_secret, handler_url=f"{receiver}/install")
    tokens = emu.install(emu.client_id)
    return portal_key(tokens["client_endpoint"])


def bound_events(emu: ThreadEmulator) -> list[tuple[str, str]]:
    tokens = emu.install_tokens()
    rows = httpx.post(f"{emu.url}/rest/event.get", json={"auth": tokens["access_token"]}).json()["result"]
    return [(row["event"], row.get("handler", "")) for row in rows]


def test_install_stores_the_portal_and_its_tokens_and_binds_the_events(
        emu: ThreadEmulator, receiver: str, state: StateStore) -> None:
    key = installed(emu, receiver)
    assert eventually(lambda: state.portal(key) is not None)
    portal = state.portal(key)
    assert portal.status is PortalStatus.ACTIVE
    assert state.load_token(key)["refresh_token"]
    assert eventually(lambda: ("ONOFFLINEEVENT", f"{receiver}/events") in bound_events(emu))
    assert ("ONCRMDEALUPDATE", "") in bound_events(emu)


def test_a_push_from_the_portal_becomes_a_signal(emu: ThreadEmulator, receiver: str, state: StateStore) -> None:
    key = installed(emu, receiver)
    assert eventually(lambda: ("ONOFFLINEEVENT", f"{receiver}/events") in bound_events(emu))
    _, cursor = state.signals_since(None)
    emu.world.portal("default").crm.write("deal", "update", 2, {"TITLE": "pushed"}, Origin(user_id=2))
    assert eventually(lambda: key in state.signals_since(cursor)[0])


def test_an_event_without_the_application_token_is_refused_and_records_nothing(
        emu: ThreadEmulator, receiver: str, state: StateStore) -> None:
    key = installed(emu, receiver)
    assert eventually(lambda: state.portal(key) is not None)
    _, cursor = state.signals_since(None)
    portal = state.portal(key)
    forged = {"event": "ONOFFLINEEVENT", "auth[member_id]": portal.member_id, "auth[application_token]": "forged"}
    assert httpx.post(f"{receiver}/events", data=forged).status_code == 401
    uninstall = {"event": "ONAPPUNINSTALL", "auth[member_id]": portal.member_id, "auth[application_token]": "x"}
    assert httpx.post(f"{receiver}/events", data=uninstall).status_code == 401
    assert state.signals_since(cursor)[0] == {}
    assert state.portal(key).status is PortalStatus.ACTIVE


def test_an_uninstall_with_the_application_token_is_recorded(
        emu: ThreadEmulator, receiver: str, state: StateStore) -> None:
    key = installed(emu, receiver)
    assert eventually(lambda: state.portal(key) is not None)
    portal = state.portal(key)
    genuine = {"event": "ONAPPUNINSTALL", "auth[member_id]": portal.member_id,
               "auth[application_token]": portal.application_token}
    assert httpx.post(f"{receiver}/events", data=genuine).status_code == 200
    assert state.portal(key).status is PortalStatus.UNINSTALLED


def test_an_install_callback_without_tokens_is_refused(receiver: str, state: StateStore) -> None:
    response = httpx.post(f"{receiver}/install", data={"event": "ONAPPINSTALL", "auth[domain]": "x"})
    assert response.status_code == 400
    assert "access_token" in response.json()["missing"]
    assert state.portals() == []


# -- forged and verified installs ------------------------------------------------------------------

def install_form(auth: dict[str, Any]) -> dict[str, str]:
    """An ONAPPINSTALL POST as the portal sends it (form fields with PHP brackets, facts §7.4)."""
    return {"event": "ONAPPINSTALL", "data[VERSION]": "1",
            **{f"auth[{name}]": str(value) for name, value in auth.items()}}


def genuine_auth(emu: ThreadEmulator, client_id: str | None = None, client_secret: str | None = None
                 ) -> dict[str, Any]:
    """A genuine auth block for the default portal (a fresh pair through the code flow), as an
    install callback carries it; the emulator POSTs nothing for it."""
    portal = emu.world.portal("default")
    tokens = emu.install_tokens(client_id=client_id, client_secret=client_secret)
    installation = portal.installations[client_id or emu.client_id]
    return {**tokens, "domain": portal.domain, "application_token": installation.application_token}


def stored(state: StateStore, key: str) -> tuple[dict | None, str | None]:
    portal = state.portal(key)
    return state.load_token(key), None if portal is None else portal.application_token


def made_up(portal_domain: str, client_endpoint: str, member_id: str) -> dict[str, str]:
    return {"access_token": "f" * 32, "refresh_token": "e" * 32, "expires_in": "3600",
            "domain": portal_domain, "client_endpoint": client_endpoint, "member_id": member_id,
            "application_token": "d" * 32}


def test_a_forged_install_with_a_known_member_id_and_made_up_tokens_is_refused_and_changes_nothing(
        emu: ThreadEmulator, receiver: str, state: StateStore) -> None:
    key = installed(emu, receiver)
    assert eventually(lambda: state.portal(key) is not None)
    portal, before = state.portal(key), stored(state, key)
    forged = made_up(portal.domain, portal.client_endpoint, portal.member_id)
    response = httpx.post(f"{receiver}/install", data=install_form(forged))
    assert response.status_code == 403
    assert response.json()["error"] == "install_refused"
    assert stored(state, key) == before
    uninstall = {"event": "ONAPPUNINSTALL", "auth[member_id]": portal.member_id,
                 "auth[application_token]": forged["application_token"]}
    assert httpx.post(f"{receiver}/events", data=uninstall).status_code == 401
    assert state.portal(key).status is PortalStatus.ACTIVE


def test_an_install_naming_an_address_the_caller_controls_is_refused_without_calling_it(
        receiver: str, state: StateStore, listener: Listener) -> None:
    forged = {**made_up(listener.host, f"http://{listener.host}/rest/", "a" * 32),
              "server_endpoint": f"http://{listener.host}/rest/"}
    response = httpx.post(f"{receiver}/install", data=install_form(forged))
    assert response.status_code == 403
    time.sleep(0.5)  # an install hook, had one started, would have called by now
    assert listener.requests == []
    assert state.portals(status=None) == []


def test_a_genuine_token_presented_for_a_caller_controlled_address_is_refused_without_calling_it(
        emu: ThreadEmulator, receiver: str, state: StateStore, listener: Listener) -> None:
    genuine = genuine_auth(emu)
    forged = {**genuine, "domain": listener.host, "client_endpoint": f"http://{listener.host}/rest/",
              "server_endpoint": f"http://{listener.host}/rest/"}
    response = httpx.post(f"{receiver}/install", data=install_form(forged))
    assert response.status_code == 403
    assert "another portal" in response.json()["detail"]
    time.sleep(0.5)
    assert listener.requests == []
    assert state.portals(status=None) == []


def test_an_install_with_a_token_of_another_application_is_refused(
        emu: ThreadEmulator, receiver: str, state: StateStore) -> None:
    emu.register_app(*OTHER_APP)
    emu.install(OTHER_APP[0])
    other = genuine_auth(emu, *OTHER_APP)
    response = httpx.post(f"{receiver}/install", data=install_form(other))
    assert response.status_code == 403
    assert response.json()["detail"] == "the access token was issued to another application"
    assert state.portals(status=None) == []


def test_a_genuine_access_token_with_made_up_refresh_and_application_tokens_keeps_the_known_credentials(
        emu: ThreadEmulator, receiver: str, state: StateStore) -> None:
    key = installed(emu, receiver)
    assert eventually(lambda: state.portal(key) is not None)
    before = stored(state, key)
    forged = {**genuine_auth(emu), "refresh_token": "e" * 32, "application_token": "d" * 32}
    response = httpx.post(f"{receiver}/install", data=install_form(forged))
    assert response.status_code == 403
    assert "refused the refresh token" in response.json()["detail"]
    assert stored(state, key) == before


def test_a_reinstall_with_a_new_application_token_and_a_working_pair_is_accepted_with_a_proven_pair(
        emu: ThreadEmulator, receiver: str, state: StateStore) -> None:
    key = installed(emu, receiver)
    assert eventually(lambda: state.portal(key) is not None)
    presented = {**genuine_auth(emu), "application_token": "n" * 32}
    response = httpx.post(f"{receiver}/install", data=install_form(presented))
    assert response.status_code == 200 and response.json() == {"portal": key}
    token, application_token = stored(state, key)
    assert application_token == "n" * 32
    # The presented refresh token was redeemed; the stored pair is the rotated one, and it works.
    assert token["refresh_token"] != presented["refresh_token"]
    app_keys = OAuthApp(emu.client_id, emu.client_secret, token_url=emu.token_url)
    with Bitrix24Client(app_keys.session(key, state.tokens)) as client:
        assert client.call("profile").result["ID"] == 1


def test_a_reinstall_with_the_stored_application_token_replaces_the_pair_after_app_info(
        emu: ThreadEmulator, receiver: str, state: StateStore) -> None:
    key = installed(emu, receiver)
    assert eventually(lambda: state.portal(key) is not None)
    again = genuine_auth(emu)
    token_calls = emu.oauth_calls()["token"]  # the code flow that made `again`
    assert httpx.post(f"{receiver}/install", data=install_form(again)).status_code == 200
    assert state.load_token(key)["refresh_token"] == again["refresh_token"]
    assert emu.oauth_calls()["token"] == token_calls  # app.info alone sufficed: no refresh spent


def test_an_event_from_an_unknown_member_id_is_refused_and_records_nothing(
        receiver: str, state: StateStore) -> None:
    _, cursor = state.signals_since(None)
    push = {"event": "ONOFFLINEEVENT", "auth[member_id]": "b" * 32, "auth[application_token]": "c" * 32}
    assert httpx.post(f"{receiver}/events", data=push).status_code == 401
    assert state.signals_since(cursor)[0] == {}
    assert state.portals(status=None) == []


def test_the_allow_list_refuses_an_unlisted_domain_before_asking_anyone(
        emu: ThreadEmulator, state: StateStore) -> None:
    with serving_receiver(emu, state, allowed=frozenset({"acme.bitrix24.com"})) as url:
        response = httpx.post(f"{url}/install", data=install_form(genuine_auth(emu)))
        emu.register_app(emu.client_id, emu.client_secret, handler_url=f"{url}/install")
        emu.install(emu.client_id)  # the real callback too
        assert wait_idle()
    assert response.status_code == 403
    assert response.json()["detail"] == "the portal's domain is not on this receiver's allow-list"
    assert emu.oauth_calls().get("app.info", 0) == 0
    assert state.portals(status=None) == []


def test_the_allow_list_admits_a_listed_domain_in_any_case(emu: ThreadEmulator, state: StateStore) -> None:
    domain = emu.world.portal("default").domain
    with serving_receiver(emu, state, allowed=allowed_domains(f" acme.bitrix24.com , {domain.upper()}")) as url:
        response = httpx.post(f"{url}/install", data=install_form(genuine_auth(emu)))
    assert response.status_code == 200
    assert [portal.domain for portal in state.portals()] == [domain]


def test_an_oauth_server_fault_during_install_answers_503_stores_nothing_and_the_retry_succeeds(
        emu: ThreadEmulator, receiver: str, state: StateStore) -> None:
    form = install_form(genuine_auth(emu))
    emu.add_oauth_fault("app.info", "http_500")
    response = httpx.post(f"{receiver}/install", data=form, timeout=30)
    assert response.status_code == 503
    assert response.json()["error"] == "install_unverified"
    assert emu.oauth_calls()["app.info"] == 3  # a read: retried, then given up
    assert state.portals(status=None) == []
    emu.clear_oauth_faults()
    retried = httpx.post(f"{receiver}/install", data=form)
    assert retried.status_code == 200
    assert state.portal(retried.json()["portal"]).status is PortalStatus.ACTIVE


def test_a_dropped_app_info_answer_is_retried_within_the_install(
        emu: ThreadEmulator, receiver: str, state: StateStore) -> None:
    emu.add_oauth_fault("app.info", "drop", count=1)
    response = httpx.post(f"{receiver}/install", data=install_form(genuine_auth(emu)), timeout=30)
    assert response.status_code == 200
    assert emu.oauth_calls()["app.info"] == 2


def test_a_verifier_pointed_at_a_portal_instead_of_the_oauth_server_fails_closed(
        emu: ThreadEmulator, state: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"), serving_receiver(emu, state, server_endpoint=f"{emu.url}/rest/") as url:
        response = httpx.post(f"{url}/install", data=install_form(genuine_auth(emu)), timeout=30)
    assert response.status_code == 503
    assert response.json()["error"] == "install_unverified"
    assert "did not answer with the OAuth server's app.info shape" in caplog.text
    assert state.portals(status=None) == []


def test_the_oauth_server_endpoint_is_derived_from_the_token_url() -> None:
    assert server_endpoint_for("https://oauth.bitrix.info/oauth/token/") == "https://oauth.bitrix.info/rest/"
    assert server_endpoint_for("https://auth.example.com/b24/oauth/token") == "https://auth.example.com/b24/rest/"
    with pytest.raises(ValueError):
        server_endpoint_for("https://auth.example.com/token")
    default = InstallVerifier(OAuthApp("app.x", "secret-value"))
    assert default.server_endpoint == "https://oauth.bitrix.info/rest/"


def test_presented_access_tokens_never_reach_the_log(
        emu: ThreadEmulator, receiver: str, caplog: pytest.LogCaptureFixture) -> None:
    genuine = genuine_auth(emu)
    forged = made_up(genuine["domain"], genuine["client_endpoint"], genuine["member_id"])
    with caplog.at_level("INFO"):
        assert httpx.post(f"{receiver}/install", data=install_form(forged)).status_code == 403
        assert httpx.post(f"{receiver}/install", data=install_form(genuine)).status_code == 200
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "app.info?auth=***" in logged
    assert forged["access_token"] not in logged and genuine["access_token"] not in logged


def test_an_install_whose_portal_key_belongs_to_another_portal_is_refused_and_changes_nothing(
        emu: ThreadEmulator, receiver: str, state: StateStore) -> None:
    auth = genuine_auth(emu)
    key = portal_key(auth["client_endpoint"])
    # Another portal whose address made the same key (e.g. host "a.example.com-8443" vs port 8443).
    state.save_portal(Portal(key=key, member_id="another-member", domain="a.example.com-8443",
                             client_endpoint="https://a.example.com-8443/rest/", application_token="c" * 32))
    response = httpx.post(f"{receiver}/install", data=install_form(auth))
    assert response.status_code == 409 and response.json()["error"] == "install_conflict"
    assert state.portal(key).member_id == "another-member"
    assert state.load_token(key) is None


def test_a_key_conflict_is_refused_before_a_reinstall_spends_its_refresh_token(
        emu: ThreadEmulator, receiver: str, state: StateStore) -> None:
    auth = genuine_auth(emu)
    key = portal_key(auth["client_endpoint"])
    # The portal is known under an older address, with another application_token: a reinstall would
    # redeem its refresh token; the key it now maps to is held by another portal.
    state.save_portal(Portal(key="old-address", member_id=auth["member_id"], domain=auth["domain"],
                             client_endpoint="https://old-address/rest/", application_token="b" * 32))
    state.save_portal(Portal(key=key, member_id="another-member", domain="a.example.com-8443",
                             client_endpoint="https://a.example.com-8443/rest/", application_token="c" * 32))
    token_calls = emu.oauth_calls().get("token", 0)
    response = httpx.post(f"{receiver}/install", data=install_form(auth))
    assert response.status_code == 409
    assert emu.oauth_calls().get("token", 0) == token_calls, "the refresh token must not be spent"
