"""OAuth token life cycle against the emulator's OAuth server (real HTTP, real token files).

An access token expires hourly; the client must refresh exactly once however many threads hit the
expiry together, persist the rotated pair before using it (the old refresh token dies with use,
facts §7.2, §10.9), adopt a pair another process already rotated, and turn ``invalid_grant`` into a
clear "re-authorize this portal" error.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from connectors.bitrix24 import (
    Bitrix24Client,
    FileTokenStore,
    OAuthApp,
    ReauthorizationRequired,
    WrongAuthType,
)
from tests.connector.conftest import FAST_RETRY, PORTAL


def session_for(emu, store: FileTokenStore):
    app = OAuthApp(emu.client_id, emu.client_secret, token_url=f"{emu.url}/oauth/token/")
    return app.session(PORTAL, store)


def test_a_token_expiring_mid_run_is_refreshed_once_and_the_rotated_pair_is_persisted(
        emu, tmp_path: Path) -> None:
    store = FileTokenStore(tmp_path)
    store.save(PORTAL, emu.install_tokens())
    original = store.load(PORTAL)
    session = session_for(emu, store)
    client = Bitrix24Client(session, retry=FAST_RETRY, max_concurrency=8)
    client.call("feature.get", {"CODE": "rest_offline_extended"})

    emu.expire_tokens()
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                client.call("feature.get", {"CODE": "rest_offline_extended"})
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    assert session.refreshes == 1
    assert client.usage.refreshes >= 1
    rotated = store.load(PORTAL)
    assert rotated["refresh_token"] != original["refresh_token"]
    assert rotated["access_token"] != original["access_token"]
    assert rotated["client_endpoint"] == original["client_endpoint"]
    client.close()


def test_a_pair_rotated_by_another_process_is_adopted_instead_of_refreshing_again(
        emu, tmp_path: Path) -> None:
    store = FileTokenStore(tmp_path)
    store.save(PORTAL, emu.install_tokens())
    first, second = session_for(emu, store), session_for(emu, store)
    with Bitrix24Client(first, retry=FAST_RETRY) as one, Bitrix24Client(second, retry=FAST_RETRY) as other:
        one.call("app.info")
        other.call("app.info")
        emu.expire_tokens()
        one.call("app.info")  # refreshes and saves
        other.call("app.info")  # its token expired too; the store already holds a newer pair
    assert (first.refreshes, second.refreshes) == (1, 0)


def test_a_dead_refresh_token_asks_for_reauthorization(emu, tmp_path: Path) -> None:
    store = FileTokenStore(tmp_path)
    store.save(PORTAL, {**emu.install_tokens(), "refresh_token": "0" * 64})
    with Bitrix24Client(session_for(emu, store), retry=FAST_RETRY) as client:
        emu.expire_tokens()
        with pytest.raises(ReauthorizationRequired, match="re-authorize this portal") as raised:
            client.call("app.info")
    assert raised.value.portal == PORTAL


def test_a_portal_without_stored_token_asks_for_authorization(emu, tmp_path: Path) -> None:
    with Bitrix24Client(session_for(emu, FileTokenStore(tmp_path)), retry=FAST_RETRY) as client, \
            pytest.raises(ReauthorizationRequired, match="no token stored"):
        client.call("app.info")


def test_the_client_endpoint_comes_from_the_token(emu, tmp_path: Path) -> None:
    store = FileTokenStore(tmp_path)
    store.save(PORTAL, emu.install_tokens())
    grant = session_for(emu, store).grant()
    assert grant.endpoint == f"{emu.url}/rest/"
    assert grant.access_token not in grant.endpoint


def test_webhooks_cannot_use_offline_events(emu, webhook_client) -> None:
    client = webhook_client(emu)
    assert client.call("feature.get", {"CODE": "rest_offline_extended"}).result == {"value": "Y"}
    with pytest.raises(WrongAuthType):
        client.call("event.offline.list")
