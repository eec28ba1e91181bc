"""Fixtures for connector tests: a live emulator over loopback and clients authenticated against it.

OAuth clients keep their tokens in a real `FileTokenStore` under ``tmp_path`` and refresh through the
emulator's ``/oauth/token/``; webhook clients use the emulator's default webhook.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.bitrix24 import Bitrix24Client, FileTokenStore, OAuthApp, RetryPolicy, WebhookCredentials
from connectors.bitrix24.throttle import RateLimits
from emulator.testing import ThreadEmulator, run_emulator

PORTAL = "default"
# Tests that provoke retries should not wait seconds between attempts.
FAST_RETRY = RetryPolicy(attempts=4, backoff_base_s=0.05, backoff_max_s=0.2)


@pytest.fixture
def emu() -> Iterator[ThreadEmulator]:
    """Limits off: calls as fast as the tests like."""
    with run_emulator(limits=False) as running:
        yield running


@pytest.fixture
def limited_emu() -> Iterator[ThreadEmulator]:
    """Standard-plan rate limits on (burst 50, 2/s); professional features (clear=0, auth_connector)."""
    with run_emulator(limits=True, plan="professional") as running:
        yield running


ClientFactory = Callable[..., Bitrix24Client]


@pytest.fixture
def oauth_client(tmp_path: Path) -> Iterator[ClientFactory]:
    """``oauth_client(emu, **client_options)``: an OAuth client of the default app, tokens on disk."""
    clients: list[Bitrix24Client] = []

    def make(emulator: ThreadEmulator, **options: Any) -> Bitrix24Client:
        store = options.pop("store", None) or FileTokenStore(tmp_path / "tokens")
        if store.load(PORTAL) is None:
            store.save(PORTAL, emulator.install_tokens())
        app = OAuthApp(emulator.client_id, emulator.client_secret, token_url=f"{emulator.url}/oauth/token/")
        options.setdefault("retry", FAST_RETRY)
        options.setdefault("limits", RateLimits.standard())
        client = Bitrix24Client(app.session(PORTAL, store), **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def webhook_client() -> Iterator[ClientFactory]:
    clients: list[Bitrix24Client] = []

    def make(emulator: ThreadEmulator, **options: Any) -> Bitrix24Client:
        options.setdefault("retry", FAST_RETRY)
        client = Bitrix24Client(WebhookCredentials(emulator.webhook_url), **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def user_changes(emulator: ThreadEmulator, entity: str, op: str, ids: list[int] | None = None,
                 count: int = 0, fields: dict | None = None) -> list[int]:
    """CRM changes made by a UI user, written in-process (thousands per second, no HTTP).

    ``op`` "add" creates ``count`` records; "update"/"delete" touch ``ids``.
    """
    from emulator.events import Origin  # after emulator.testing has loaded the server's modules

    portal = emulator.world.portals[PORTAL]
    origin = Origin(user_id=2)
    written: list[int] = []
    with portal.lock:
        if op == "add":
            for n in range(count):
                values = {"TITLE": f"{entity} {n}", **(fields or {})}
                written.append(portal.crm.write(entity, "add", None, values, origin))
        else:
            for entity_id in ids or []:
                values = dict(fields or {"COMMENTS": f"{op} {entity_id}"})
                portal.crm.write(entity, op, entity_id, values, origin)
                written.append(entity_id)
    return written
