"""Quiet portals get their refresh tokens used before they expire (facts §7.2, §8).

Real parts: the emulator's OAuth server (it rotates pairs and refuses unknown refresh tokens) and
the state store on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from connectors.bitrix24 import OAuthApp
from connectors.state import Portal, StateStore
from connectors.state.hygiene import refresh_quiet_portals
from emulator.testing import ThreadEmulator, run_emulator

OLD, FRESH, GONE, UNINSTALLED = "default", "fresh", "gone", "left"


@pytest.fixture
def emu() -> Iterator[ThreadEmulator]:
    with run_emulator(limits=False) as running:
        for name in (FRESH, UNINSTALLED):
            running.create_portal(name)
            running.install(running.client_id, portal=name)
        yield running


def _install(store: StateStore, emu: ThreadEmulator, key: str, token: dict) -> None:
    store.save_portal(Portal(key, f"member-{key}", f"{key}.example", token["client_endpoint"], f"app-token-{key}"))
    store.save_token(key, token)


def test_only_portals_quiet_for_longer_than_the_threshold_are_refreshed(emu: ThreadEmulator, store: StateStore) -> None:
    app = OAuthApp(emu.client_id, emu.client_secret, token_url=emu.token_url)
    _install(store, emu, OLD, emu.install_tokens(OLD))
    # A portal whose refresh token the OAuth server no longer knows (expired while nobody looked).
    _install(store, emu, GONE, {**emu.install_tokens(FRESH), "refresh_token": "no-longer-valid-refresh-token"})
    _install(store, emu, UNINSTALLED, emu.install_tokens(UNINSTALLED))
    store.mark_uninstalled(UNINSTALLED)
    time.sleep(1.2)
    _install(store, emu, FRESH, emu.install_tokens(FRESH))
    before = {key: store.load_token(key) for key in (OLD, FRESH, UNINSTALLED)}
    refreshes_before = emu.oauth_calls().get("token", 0)

    outcome = refresh_quiet_portals(store, app, older_than=timedelta(seconds=1))

    assert outcome.refreshed == [OLD]
    assert list(outcome.reauthorization_required) == [GONE]
    assert "no-longer-valid-refresh-token" not in outcome.reauthorization_required[GONE]
    assert outcome.failed == {}
    # Two calls to the token endpoint: the refresh of OLD and the refused one of GONE.
    assert emu.oauth_calls()["token"] - refreshes_before == 2
    rotated = store.load_token(OLD)
    assert rotated["refresh_token"] != before[OLD]["refresh_token"]
    assert rotated["access_token"] != before[OLD]["access_token"]
    assert store.load_token(FRESH) == before[FRESH]
    assert store.load_token(UNINSTALLED) == before[UNINSTALLED]
    # The new pair works, and the refreshed portal is no longer quiet.
    answer = httpx.post(f"{rotated['client_endpoint']}crm.deal.fields", json={"auth": rotated["access_token"]})
    assert answer.status_code == 200, answer.text
    assert OLD not in store.tokens_saved_before(datetime.now(UTC) - timedelta(seconds=1))
