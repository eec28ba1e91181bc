"""Fixtures: a live emulator, an OAuth client of its app, and each warehouse engine (DuckDB file,
PostgreSQL schema) with the analysts' schema that goes with it dropped afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from connectors.bitrix24 import Bitrix24Client, FileTokenStore, OAuthApp
from connectors.warehouse.sql_warehouse import SqlWarehouse
from emulator.testing import ThreadEmulator, run_emulator
from tests.warehouse.conftest import PG_DSN, WarehouseTarget, warehouse_target  # noqa: F401  (fixture)

PORTAL = "default"


@pytest.fixture
def emu() -> Iterator[ThreadEmulator]:
    with run_emulator(limits=False) as running:
        yield running


@pytest.fixture
def client(emu: ThreadEmulator, tmp_path: Path) -> Iterator[Bitrix24Client]:
    store = FileTokenStore(tmp_path / "tokens")
    store.save(PORTAL, emu.install_tokens())
    app = OAuthApp(emu.client_id, emu.client_secret, token_url=emu.token_url)
    with Bitrix24Client(app.session(PORTAL, store)) as opened:
        yield opened


@pytest.fixture
def warehouse(warehouse_target: WarehouseTarget) -> Iterator[SqlWarehouse]:  # noqa: F811
    opened = warehouse_target.open()
    assert isinstance(opened, SqlWarehouse)
    yield opened
    if warehouse_target.engine == "postgres":
        with psycopg.connect(PG_DSN, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{warehouse_target.options["schema"]}_analytics" CASCADE')
