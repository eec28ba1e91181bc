"""Fixtures: every state-store test runs on a SQLite file and on the real PostgreSQL server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from connectors.state import StateStore, open_state_store

PG_DSN = os.environ.get("B24_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/bitrix24_test")


@dataclass(frozen=True)
class StoreTarget:
    """How to open the store under test, also from another process."""

    engine: str
    target: str
    schema: str

    def open(self) -> StateStore:
        return open_state_store(self.target, schema=self.schema)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_target(request: pytest.FixtureRequest, tmp_path) -> Iterator[StoreTarget]:
    schema = f"state_test_{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        yield StoreTarget("sqlite", str(tmp_path / "state" / "state.sqlite3"), schema)
        return
    yield StoreTarget("postgres", PG_DSN, schema)
    with psycopg.connect(PG_DSN, autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def store(store_target: StoreTarget) -> StateStore:
    return store_target.open()
