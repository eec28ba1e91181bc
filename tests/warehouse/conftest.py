"""Fixtures: every warehouse test runs on a real DuckDB file and on the real PostgreSQL server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import pytest

from connectors.warehouse import Warehouse, open_warehouse

PG_DSN = os.environ.get("B24_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/bitrix24_test")


@dataclass
class WarehouseTarget:
    """One warehouse under test: a DuckDB file in tmp_path, or a fresh PostgreSQL schema. It can be
    opened again (after a crash, or from another process with ``target`` and ``options``)."""

    engine: str
    target: str
    options: dict[str, str]
    opened: list[Warehouse] = field(default_factory=list)

    def open(self) -> Warehouse:
        warehouse = open_warehouse(self.target, **self.options)
        self.opened.append(warehouse)
        return warehouse


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def warehouse_target(request: pytest.FixtureRequest, tmp_path) -> Iterator[WarehouseTarget]:
    if request.param == "duckdb":
        target = WarehouseTarget("duckdb", str(tmp_path / "warehouse.duckdb"), {})
    else:
        target = WarehouseTarget("postgres", PG_DSN, {"schema": f"wh_test_{uuid.uuid4().hex[:12]}"})
    yield target
    for warehouse in target.opened:
        warehouse.close()
    if request.param == "postgres":
        with psycopg.connect(PG_DSN, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{target.options["schema"]}" CASCADE')


@pytest.fixture
def warehouse(warehouse_target: WarehouseTarget) -> Warehouse:
    return warehouse_target.open()
