"""The REST client against the emulator: envelopes, usage accounting, typed errors, retries.

Every response's ``time`` block must be accounted per method (batch sub-calls under their own
names); error envelopes must become typed exceptions; HTML pages and broken JSON must raise
`MalformedResponse`; transient failures are retried only where repeating is safe (see retry.py).
"""

from __future__ import annotations

import pytest

from connectors.bitrix24 import Command, MalformedResponse
from connectors.bitrix24.errors import InvalidArgument, MethodNotFound, ServerError, TransportError


def test_calls_and_batches_are_accounted_per_method(emu, oauth_client) -> None:
    client = oauth_client(emu)
    emu.reset_stats()
    response = client.call("feature.get", {"CODE": "rest_offline_extended"})
    assert response.result == {"value": "Y"} and "processing" in response.time
    outcome = client.batch({"a": Command("feature.get", {"CODE": "rest_auth_connector"}),
                            "b": Command("app.info"), "c": Command("profile")})
    assert outcome.result("a") == {"value": "Y"} and outcome.result("c")["ID"] == 1
    usage = client.usage.snapshot()
    assert usage["http_requests"] == emu.stats()["http_requests"] == 2
    methods = usage["methods"]
    assert methods["feature.get"]["calls"] == 2
    assert methods["batch"]["calls"] == 1 and methods["app.info"]["calls"] == 1
    assert methods["feature.get"]["processing_s"] > 0 and methods["batch"]["duration_s"] > 0


def test_documented_errors_arrive_typed(emu, oauth_client) -> None:
    client = oauth_client(emu)
    with pytest.raises(MethodNotFound) as missing:
        client.call("no.such.method")
    assert missing.value.status == 404 and missing.value.code == "ERROR_METHOD_NOT_FOUND"
    with pytest.raises(InvalidArgument, match="CODE can't be empty"):
        client.call("feature.get")
    outcome = client.batch({"bad": Command("feature.get"), "good": Command("app.info")})
    assert isinstance(outcome.errors["bad"], InvalidArgument) and outcome.ok("good")


def test_a_cut_off_json_body_on_a_read_is_repeated_until_it_arrives_whole(emu, oauth_client) -> None:
    client = oauth_client(emu)
    emu.add_fault("app.info", "malformed_json", count=2)
    emu.reset_stats()
    assert client.call("app.info").result["CODE"] == emu.client_id
    assert emu.stats()["http_requests"] == 3 and client.usage.retries == 2


def test_a_cut_off_json_body_on_a_call_that_changes_state_raises_a_clear_error_and_is_not_repeated(
        emu, oauth_client) -> None:
    client = oauth_client(emu)
    emu.add_fault("crm.deal.add", "malformed_json", count=1)
    emu.reset_stats()
    with pytest.raises(MalformedResponse) as raised:
        client.call("crm.deal.add", {"fields": {"TITLE": "once"}})
    assert raised.value.status == 200 and raised.value.method == "crm.deal.add"
    assert raised.value.excerpt.startswith('{"result"')
    assert emu.stats()["http_requests"] == 1


def test_a_persistently_cut_off_body_ends_as_a_malformed_response_after_the_attempts(emu, oauth_client) -> None:
    client = oauth_client(emu)
    emu.add_fault("app.info", "malformed_json")
    emu.reset_stats()
    with pytest.raises(MalformedResponse, match="HTTP 200"):
        client.call("app.info")
    assert emu.stats()["http_requests"] == client.retry.attempts


def test_an_html_error_page_on_a_read_is_retried_then_succeeds(emu, oauth_client) -> None:
    client = oauth_client(emu)
    emu.add_fault("app.info", "html", count=2)
    assert client.call("app.info").result["CODE"] == emu.client_id
    assert client.usage.retries == 2


def test_a_persistent_html_page_ends_as_a_malformed_response(emu, oauth_client) -> None:
    client = oauth_client(emu)
    emu.add_fault("app.info", "html")
    with pytest.raises(MalformedResponse, match="HTTP 502, an HTML page"):
        client.call("app.info")


def test_server_errors_and_dropped_connections_on_reads_are_retried(emu, oauth_client) -> None:
    client = oauth_client(emu)
    emu.add_fault("profile", "http_500", count=1)
    emu.add_fault("app.info", "drop", count=1)
    assert client.call("profile").result["ID"] == 1
    assert client.call("app.info").result["INSTALLED"] is True
    assert client.usage.retries == 2


def test_an_unclear_outcome_of_a_write_is_not_repeated(emu, oauth_client) -> None:
    client = oauth_client(emu)
    emu.add_fault("event.bind", "drop", count=1)
    emu.reset_stats()
    with pytest.raises(TransportError):
        client.call("event.bind", {"event": "ONCRMDEALUPDATE", "event_type": "offline"})
    assert emu.stats()["http_requests"] == 1
    emu.add_fault("event.bind", "http_500", count=1)
    with pytest.raises(ServerError):
        client.call("event.bind", {"event": "ONCRMDEALUPDATE", "event_type": "offline"})
