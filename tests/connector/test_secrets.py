"""Secrets never leak: not in exception texts, reprs, or log records at any level (real HTTP).

Every error path that could echo a request is provoked — bad token, dead refresh token, malformed and
HTML answers, refused connections — with DEBUG logging on for everything, including httpx, which logs
request URLs (and a webhook URL contains its code, facts §7.1).
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from connectors.bitrix24 import (
    Bitrix24Client,
    Bitrix24Error,
    FileTokenStore,
    OAuthApp,
    RetryPolicy,
    WebhookCredentials,
)
from tests.connector.conftest import FAST_RETRY, PORTAL

WEBHOOK_CODE = "emulatorwebhook"


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_no_secret_appears_in_errors_reprs_or_logs(emu, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = emu.install_tokens()
    store = FileTokenStore(tmp_path)
    store.save(PORTAL, tokens)
    app = OAuthApp(emu.client_id, emu.client_secret, token_url=f"{emu.url}/oauth/token/")
    session = app.session(PORTAL, store)
    client = Bitrix24Client(session, retry=FAST_RETRY)
    webhook = WebhookCredentials(emu.webhook_url)
    hook_client = Bitrix24Client(webhook, retry=RetryPolicy(attempts=1))
    texts: list[str] = [repr(app), repr(session), repr(client), repr(store), repr(webhook), repr(hook_client),
                        repr(session.grant())]

    def provoke(call) -> None:
        with pytest.raises(Bitrix24Error) as raised:
            call()
        texts.extend([str(raised.value), repr(raised.value), repr(raised.value.args)])

    hook_client.call("app.info")
    emu.add_fault("app.info", "malformed_json", count=1)
    provoke(lambda: hook_client.call("app.info"))
    emu.add_fault("app.info", "html", count=1)
    provoke(lambda: hook_client.call("app.info"))
    emu.add_fault("profile", "malformed_json", count=FAST_RETRY.attempts)  # a read: retried, then raised
    provoke(lambda: client.call("profile"))
    provoke(lambda: Bitrix24Client(WebhookCredentials(f"http://127.0.0.1:{unused_port()}/rest/1/{WEBHOOK_CODE}/"),
                                   retry=RetryPolicy(attempts=1)).call("app.info"))
    store.save(PORTAL, {**tokens, "access_token": "f" * 64, "refresh_token": "e" * 64})
    provoke(lambda: Bitrix24Client(app.session(PORTAL, store), retry=FAST_RETRY).call("app.info"))

    secrets = [tokens["access_token"], tokens["refresh_token"], emu.client_secret, WEBHOOK_CODE,
               "f" * 64, "e" * 64]
    rotated = store.load(PORTAL)
    secrets += [rotated["access_token"], rotated["refresh_token"]]
    logged = [record.getMessage() for record in caplog.records]
    assert any("HTTP Request" in line and "/rest/1/***/app.info" in line for line in logged), \
        "httpx request logging (webhook URL) was not exercised"
    for secret in secrets:
        for text in texts + logged:
            assert secret not in text, f"secret leaked into: {text[:120]!r}"
    client.close()
    hook_client.close()
