"""`make test`'s PostgreSQL set-up (tests/conftest.py): the test database is created when the server is
there; without a server, PostgreSQL tests skip with one hint, and fail instead under CI=true.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from pipelines.demo import REPO, free_port
from tests.conftest import PG_DSN, ensure_test_database


@pytest.mark.postgres
def test_a_missing_test_database_is_created_on_a_running_server() -> None:
    database = f"bitrix24_test_boot_{uuid.uuid4().hex[:8]}"
    dsn = make_conninfo(PG_DSN, dbname=database)
    try:
        assert ensure_test_database(dsn) is None
        with psycopg.connect(dsn) as connection:
            assert connection.execute("select current_database()").fetchone() == (database,)
        assert ensure_test_database(dsn) is None  # and an existing one is left as it is
    finally:
        with psycopg.connect(make_conninfo(PG_DSN, dbname="postgres"), autocommit=True) as connection:
            connection.execute(f'drop database if exists "{database}"')


def test_an_unreachable_server_gives_one_hint_naming_the_address_and_the_fix() -> None:
    port = free_port()

    hint = ensure_test_database(f"postgresql://postgres:hunter2@127.0.0.1:{port}/bitrix24_test")

    assert hint is not None
    assert hint.startswith(f"PostgreSQL not reachable at 127.0.0.1:{port} (")
    assert hint.endswith("start it (e.g. `pg_ctlcluster <version> main start`) or set B24_TEST_PG_DSN")
    assert "hunter2" not in hint


PG_TESTS = textwrap.dedent("""
    import pytest

    @pytest.mark.postgres
    def test_needs_postgres():
        pass

    def test_needs_nothing():
        pass
""")


def _run_without_server(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_pg.py").write_text(PG_TESTS)
    environment = {key: value for key, value in os.environ.items() if key != "CI"}
    environment.update(B24_TEST_PG_DSN=f"postgresql://postgres@127.0.0.1:{free_port()}/bitrix24_test", **env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
         "-c", str(REPO / "pyproject.toml"), str(tmp_path / "test_pg.py")],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=120)


def test_without_a_server_postgres_tests_are_skipped_with_the_hint(tmp_path: Path) -> None:
    result = _run_without_server(tmp_path)

    assert result.returncode == 0, result.stdout
    assert "1 passed, 1 skipped" in result.stdout
    assert "PostgreSQL tests did not run: PostgreSQL not reachable at 127.0.0.1:" in result.stdout


def test_without_a_server_under_ci_postgres_tests_fail_instead_of_skipping(tmp_path: Path) -> None:
    result = _run_without_server(tmp_path, CI="true")

    assert result.returncode == 1, result.stdout
    assert "1 passed, 1 error" in result.stdout
    assert "CI=true: PostgreSQL tests must run, not skip" in result.stdout


@pytest.mark.postgres
def test_a_server_that_refuses_the_role_says_so_rather_than_unreachable() -> None:
    hint = ensure_test_database(make_conninfo(PG_DSN, user="no_such_role_for_tests"))

    assert hint is not None
    assert hint.startswith("PostgreSQL at ")
    assert 'role "no_such_role_for_tests" does not exist' in hint
