"""The app's receiver over loopback, fed by the emulator's real install callback and pushes.

Under test: an install stores the portal and its tokens and binds the offline events plus the
ONOFFLINEEVENT push; a push from the portal becomes a signal for the sensor; anything that does not
carry the portal's application_token is refused and records nothing; an uninstall is recorded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from connectors.bitrix24 import Bitrix24Client, OAuthApp
from connectors.receiver import ReceiverSettings, create_app, portal_key
from connectors.receiver.binding import bind_portal
from connectors.state import PortalStatus, StateStore, open_state_store
from emulator.events import Origin
from emulator.testing import ThreadEmulator, run_emulator
from pipelines.demo import free_port


@pytest.fixture
def emu() -> Iterator[ThreadEmulator]:
    with run_emulator(limits=False) as running:
        yield running


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateStore]:
    with open_state_store(tmp_path / "state.sqlite3") as store:
        yield store


@pytest.fixture
def receiver(emu: ThreadEmulator, state: StateStore) -> Iterator[str]:
    """The receiver serving on a free loopback port; installs bind events with the emulator's app."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app_keys = OAuthApp(emu.client_id, emu.client_secret, token_url=f"{emu.url}/oauth/token/")

    def on_install(portal: str, settings: ReceiverSettings) -> None:
        with Bitrix24Client(app_keys.session(portal, state.tokens)) as client:
            bind_portal(client, "b24wh", f"{settings.public_url}/events", settings.min_timeout_s)

    server = uvicorn.Server(uvicorn.Config(create_app(state, ReceiverSettings(url, min_timeout_s=0), on_install),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


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
