"""Opening a warehouse by target: DuckDB paths and URLs, PostgreSQL DSNs, and nothing that would
print a password."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from connectors.warehouse import DuckDBWarehouse, PostgresWarehouse, UnsupportedWarehouse, open_warehouse
from tests.warehouse.conftest import PG_DSN


def test_a_path_or_duckdb_url_opens_duckdb(tmp_path: Path) -> None:
    with open_warehouse(tmp_path / "a.duckdb") as by_path, open_warehouse(f"duckdb://{tmp_path}/b.duckdb") as by_url:
        assert isinstance(by_path, DuckDBWarehouse)
        assert by_url.path == tmp_path / "b.duckdb"
        assert by_url.publish_snapshot() == tmp_path / "b.snapshot.duckdb"


def test_an_unknown_scheme_is_rejected_without_echoing_the_url() -> None:
    with pytest.raises(UnsupportedWarehouse) as refused:
        open_warehouse("mysql://admin:hunter2@db.example.com/crm")

    assert "hunter2" not in str(refused.value)
    assert "mysql" in str(refused.value)


@pytest.mark.postgres
def test_a_postgres_dsn_opens_postgres_and_its_repr_hides_the_password() -> None:
    dsn = PG_DSN.replace("postgresql://postgres@", "postgresql://postgres:hunter2@")
    try:
        with open_warehouse(dsn, schema="wh_test_repr") as warehouse:
            assert isinstance(warehouse, PostgresWarehouse)
            assert "hunter2" not in repr(warehouse)
            assert warehouse.publish_snapshot() is None
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as connection:
            connection.execute('DROP SCHEMA IF EXISTS "wh_test_repr" CASCADE')


def test_a_run_on_the_embedded_default_does_not_load_the_postgresql_driver() -> None:
    """psycopg (and pyarrow's CSV writer) cost ~15 MB in every run process (benchmarks/memory.py);
    they are imported when a PostgreSQL store or warehouse is first opened, not before."""
    probe = ("import sys, connectors.sync.__main__, pipelines.definitions; "
             "print(sorted(m for m in ('psycopg', 'pyarrow.csv', 'pyarrow.parquet') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert loaded.stdout.strip() == "[]", loaded.stderr[-2000:]
