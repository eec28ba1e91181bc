"""Shared by the sync tests: the portal's token store and the app keys against a running emulator,
and the warehouse fixtures of `tests.warehouse.conftest` (a DuckDB file and a PostgreSQL schema)."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.bitrix24 import FileTokenStore, OAuthApp
from emulator.testing import RunningEmulator
from tests.warehouse.conftest import warehouse, warehouse_target  # noqa: F401  (fixtures for these tests)

PORTAL = "default"


def app_keys(emu: RunningEmulator) -> OAuthApp:
    """The emulator's built-in app, with its OAuth server's token endpoint."""
    return OAuthApp(emu.client_id, emu.client_secret, token_url=emu.token_url)


@pytest.fixture
def tokens(tmp_path: Path, emu: RunningEmulator) -> FileTokenStore:
    """A token store holding a fresh install's pair for the default portal (each test's ``emu``)."""
    store = FileTokenStore(tmp_path / "tokens")
    store.save(PORTAL, emu.install_tokens())
    return store
