"""Fixtures for end-to-end tests: a PostgreSQL schema of their own, dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

PG_DSN = os.environ.get("B24_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/bitrix24_test")


@pytest.fixture
def pg_schema(request: pytest.FixtureRequest) -> Iterator[str]:
    schema = f"e2e_{uuid.uuid4().hex[:10]}"
    yield schema
    if request.node.get_closest_marker("postgres") is None:
        return  # only PostgreSQL-marked tests create it; the others must run without a server
    with psycopg.connect(PG_DSN, autocommit=True) as con:
        con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
