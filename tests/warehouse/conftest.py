"""Fixtures: every warehouse test runs on a real DuckDB file and on the real PostgreSQL server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from connectors.warehouse import Warehouse, open_warehouse

PG_DSN = os.environ.get("B24_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/bitrix24_test")

Opener = Callable[[], Warehouse]


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def open_target(request: pytest.FixtureRequest, tmp_path) -> Iterator[Opener]:
    """Opens (and reopens) one warehouse: a DuckDB file in tmp_path, or a fresh PostgreSQL schema
    that is dropped afterwards."""
    opened: list[Warehouse] = []
    if request.param == "duckdb":
        target, options = str(tmp_path / "warehouse.duckdb"), {}
    else:
        target, options = PG_DSN, {"schema": f"wh_test_{uuid.uuid4().hex[:12]}"}

    def opener() -> Warehouse:
        warehouse = open_warehouse(target, **options)
        opened.append(warehouse)
        return warehouse

    opener.engine = request.param  # type: ignore[attr-defined]
    opener.target = target  # type: ignore[attr-defined]
    opener.options = options  # type: ignore[attr-defined]
    yield opener
    for warehouse in opened:
        warehouse.close()
    if request.param == "postgres":
        with psycopg.connect(PG_DSN, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{options["schema"]}" CASCADE')


@pytest.fixture
def warehouse(open_target: Opener) -> Warehouse:
    return open_target()
