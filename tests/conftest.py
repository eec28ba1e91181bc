"""The whole suite's PostgreSQL set-up: `make test` works on a fresh machine, or says what is missing.

Tests marked ``postgres`` use the server and database of ``$B24_TEST_PG_DSN`` (default below). Before
the first of them runs, the database is created when absent. When the server cannot be reached, they
are skipped with one hint, except under CI (``CI=true``), where they fail: CI must never pass by
skipping them.
"""

from __future__ import annotations

import functools
import os

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

PG_DSN = os.environ.get("B24_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/bitrix24_test")
_CONNECT_TIMEOUT_S = 3


def ensure_test_database(dsn: str) -> str | None:
    """Make the database of ``dsn`` exist on its server, creating it (through the server's ``postgres``
    database) when absent. Returns None when it is ready, else a one-line hint saying what is missing and
    how to fix it; the hint names host and port, never the password."""
    params = conninfo_to_dict(dsn)
    database = params.get("dbname") or params.get("user") or "postgres"
    where = f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}"
    try:
        with psycopg.connect(dsn, connect_timeout=_CONNECT_TIMEOUT_S):
            return None
    except psycopg.OperationalError:
        pass  # the server is down, or it is up without the database: ask its maintenance database
    try:
        with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True,
                             connect_timeout=_CONNECT_TIMEOUT_S) as connection:
            if connection.execute("select 1 from pg_database where datname = %s", (database,)).fetchone() is None:
                connection.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
    except psycopg.errors.DuplicateDatabase:
        pass  # another test session created it meanwhile
    except psycopg.OperationalError as error:
        # libpq's first line ends in the cause: "... port 5432 failed: Connection refused".
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0].rsplit("failed: ", 1)[-1]
        if "FATAL" in reason:  # the server answered: a role, password or permission is wrong
            return f"PostgreSQL at {where} refused the test set-up ({reason}): fix B24_TEST_PG_DSN or its roles"
        return (f"PostgreSQL not reachable at {where} ({reason}): start it "
                f"(e.g. `pg_ctlcluster <version> main start`) or set B24_TEST_PG_DSN")
    except psycopg.Error as error:
        return f"PostgreSQL at {where} could not create database {database!r} ({error.sqlstate}): fix B24_TEST_PG_DSN"
    return None


@functools.cache
def _postgres_problem() -> str | None:
    return ensure_test_database(PG_DSN)


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("postgres") is None:
        return
    problem = _postgres_problem()
    if problem is None:
        return
    if _under_ci():
        pytest.fail(f"{problem} (CI=true: PostgreSQL tests must run, not skip)", pytrace=False)
    pytest.skip(problem)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _postgres_problem.cache_info().currsize and _postgres_problem() is not None:
        terminalreporter.write_line(f"PostgreSQL tests did not run: {_postgres_problem()}", yellow=True)


@pytest.fixture(autouse=True)
def _no_look_ups_from_another_test():
    """Syncs without a state store cache look-ups per process, keyed by the portal's endpoint; an
    emulator of a later test may get an earlier one's port, and with it that portal's cached types
    and fields. Each test starts with none (the product copes with stale ones too, once:
    tests/sync/test_requests.py)."""
    from connectors.bitrix24.lookups import MemoryCache

    MemoryCache.forget_all()
    yield
