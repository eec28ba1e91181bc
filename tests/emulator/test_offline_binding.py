"""Binding event handlers and the POSTs that bound online handlers receive (facts §2.3-§2.6, §2.13, §3).

The connector binds its offline events in every installer run and learns about new rows from
``ONOFFLINEEVENT`` instead of polling blindly; both only work if binding errors, the handler table
and the notification throttle (``minTimeout``) behave like Bitrix24. Notifications are received by
a small HTTP server inside the test, reached over loopback like a real app's handler.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from emulator import outbound
from emulator.events import Origin
from emulator.portal import User
from emulator.testing import ThreadEmulator

UI_USER = Origin(user_id=3)


class Receiver:
    """A local event handler URL that records every form POST with its arrival time."""

    def __init__(self) -> None:
        self.received: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handle(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                with receiver._lock:
                    receiver.received.append((time.monotonic(), dict(parse_qsl(body, keep_blank_values=True))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handle)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/handler"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def posts(self) -> list[tuple[float, dict[str, str]]]:
        assert outbound.wait_idle(10)
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


@pytest.fixture
def app(emu: ThreadEmulator, tokens: dict[str, Any], http: httpx.Client):
    token = tokens["access_token"]

    def call(method: str, **params: Any) -> httpx.Response:
        return http.post(f"{emu.url}/rest/{method}", json={**params, "auth": token})

    return call


def result(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()["result"]


def user_edit(emu: ThreadEmulator, deal_id: int) -> None:
    emu.world.portal("default").crm.write("deal", "update", deal_id, {"COMMENTS": "edited"}, UI_USER)


def test_onofflineevent_reaches_a_local_handler_no_more_often_than_min_timeout(emu, app, receiver):
    assert result(app("event.bind", event="ONCRMDEALUPDATE", event_type="offline"))
    assert result(app("event.bind", event="ONOFFLINEEVENT", handler=receiver.url, options={"minTimeout": 1}))
    started = time.monotonic()
    while time.monotonic() - started < 2.5:
        user_edit(emu, 1 + int((time.monotonic() - started) * 10) % 20)
        time.sleep(0.05)

    posts = receiver.posts()
    arrivals = [arrived for arrived, _ in posts]
    assert 2 <= len(posts) <= 3
    assert all(later - earlier >= 0.9 for earlier, later in pairwise(arrivals))
    payload = posts[0][1]
    assert payload["event"] == "ONOFFLINEEVENT"
    assert payload["ts"].isdigit()
    assert payload["auth[refresh_token]"] and payload["auth[access_token]"]
    assert payload["auth[application_token]"] and payload["auth[member_id]"]
    assert not any(key.startswith("data[") for key in payload)


def test_onofflineevent_is_not_sent_when_no_row_is_written(emu, app, receiver):
    assert result(app("event.bind", event="ONOFFLINEEVENT", handler=receiver.url))
    user_edit(emu, 1)  # nobody bound ONCRMDEALUPDATE offline: no row, no notification
    assert receiver.posts() == []


def test_online_crm_handlers_get_the_event_posted(emu, app, receiver):
    assert result(app("event.bind", event="ONCRMDEALUPDATE", handler=receiver.url))
    user_edit(emu, 6)
    posts = receiver.posts()
    assert len(posts) == 1
    payload = posts[0][1]
    assert payload["event"] == "ONCRMDEALUPDATE"
    assert payload["data[FIELDS][ID]"] == "6"
    assert payload["event_handler_id"].isdigit()
    assert payload["auth[domain]"] and payload["auth[application_token]"]
    assert emu.queue() == []  # online handlers do not queue


def test_bind_errors_are_the_documented_ones(app):
    cases = [
        ({"event": "ONCRMNOSUCHTHING", "event_type": "offline"}, 400, "ERROR_EVENT_NOT_FOUND", "Event not found"),
        ({"event": "ONOFFLINEEVENT", "event_type": "offline"}, 400, "ERROR_ARGUMENT",
         "Offline event cannot be registered for this event."),
        ({"event": "ONCRMDEALADD", "event_type": "sometimes"}, 400, "ERROR_ARGUMENT",
         "Value must be one of {online|offline}"),
        ({"event": "", "event_type": "offline"}, 400, "ERROR_ARGUMENT", "Argument 'EVENT' is null or empty"),
        ({"event": "ONCRMDEALADD"}, 400, "ERROR_ARGUMENT", "Argument 'HANDLER' is null or empty"),
    ]
    for params, status, code, text in cases:
        response = app("event.bind", **params)
        assert (response.status_code, response.json()["error"], response.json()["error_description"]) == (
            status, code, text), params
    assert app("event.bind", event="ONCRMDEALADD", event_type="sometimes").json()["argument"] == "EVENT_TYPE"


def test_binding_the_same_handler_twice_is_an_error(app):
    assert result(app("event.bind", event="oncrmdealadd", event_type="offline")) is True
    response = app("event.bind", event="ONCRMDEALADD", event_type="offline")
    assert response.status_code == 400
    assert response.json() == {"error": "ERROR_CORE",
                               "error_description": "Unable to set event handler: Handler already binded"}
    # Another connector is another handler.
    assert result(app("event.bind", event="ONCRMDEALADD", event_type="offline", auth_connector="etl")) is True


def test_event_get_lists_online_and_offline_handlers_and_unbind_counts(app, receiver):
    assert result(app("event.bind", event="ONCRMLEADADD", event_type="offline", auth_connector="etl"))
    assert result(app("event.bind", event="ONCRMLEADADD", handler=receiver.url))
    assert result(app("event.get")) == [
        {"event": "ONCRMLEADADD", "connector_id": "etl", "offline": 1},
        {"event": "ONCRMLEADADD", "handler": receiver.url, "auth_type": "0", "offline": 0},
    ]
    # Offline handlers are unbound per connector: without it nothing matches.
    assert result(app("event.unbind", event="ONCRMLEADADD", event_type="offline")) == {"count": 0}
    assert result(app("event.unbind", event="ONCRMLEADADD", event_type="offline", auth_connector="etl")) == {
        "count": 1}
    assert result(app("event.unbind", event="ONCRMLEADADD", handler=receiver.url)) == {"count": 1}
    assert result(app("event.get")) == []


def test_unbound_offline_events_are_no_longer_queued(emu, app):
    assert result(app("event.bind", event="ONCRMDEALUPDATE", event_type="offline"))
    assert result(app("event.unbind", event="ONCRMDEALUPDATE", event_type="offline")) == {"count": 1}
    user_edit(emu, 2)
    assert emu.queue() == []


def test_events_lists_what_the_app_may_bind(app):
    names = result(app("events"))
    assert {"ONOFFLINEEVENT", "ONCRMDEALUPDATE", "ONCRMACTIVITYDELETE", "ONCRMDYNAMICITEMADD",
            "ONCRMDYNAMICITEMUPDATE_128"} <= set(names)
    assert "ONCRMDEALADD" not in result(app("events", SCOPE="basic"))


def test_apps_without_the_crm_scope_cannot_bind_crm_events(emu, http):
    emu.register_app("local.user.only", "secret-u", scopes=["user"])
    emu.install("local.user.only")
    token = emu.install_tokens(client_id="local.user.only", client_secret="secret-u")["access_token"]
    response = http.post(f"{emu.url}/rest/event.bind",
                         json={"event": "ONCRMDEALADD", "event_type": "offline", "auth": token})
    assert response.status_code == 400 and response.json()["error"] == "ERROR_EVENT_NOT_FOUND"


def test_webhooks_cannot_bind(emu, http):
    response = http.post(emu.webhook_url + "event.bind", json={"event": "ONCRMDEALADD", "event_type": "offline"})
    assert response.status_code == 403 and response.json()["error"] == "WRONG_AUTH_TYPE"


def test_a_new_user_fires_onuseradd_for_apps_with_the_user_scope(emu, app, http):
    assert "ONUSERADD" in result(app("events", SCOPE="user"))
    assert result(app("event.bind", event="ONUSERADD", event_type="offline"))
    emu.world.portal("default").add_user(User(77, "Olga Smirnova", active=True, departments=(2, 3)))

    [row] = emu.queue()
    assert row["EVENT_NAME"] == "ONUSERADD"
    assert row["EVENT_DATA"] == {"ID": "77", "ACTIVE": "Y", "NAME": "Olga", "LAST_NAME": "Smirnova",
                                 "UF_DEPARTMENT": ["2", "3"]}
    # An app without the user scope is not offered the event (facts §2.3: "Event not found").
    emu.register_app("local.crm.only", "secret-c", scopes=["crm"])
    emu.install("local.crm.only")
    token = emu.install_tokens(client_id="local.crm.only", client_secret="secret-c")["access_token"]
    response = http.post(f"{emu.url}/rest/event.bind", json={"event": "ONUSERADD", "event_type": "offline",
                                                             "auth": token})
    assert response.status_code == 400 and response.json()["error"] == "ERROR_EVENT_NOT_FOUND"
