"""Warehouse upsert throughput against each engine's raw bulk insert of the same rows.

Upserts N deal-shaped rows (31 typed columns + the record as JSON, dtypes as the Bitrix24 source
produces them) in chunks of 2,500, one transaction per chunk, into DuckDB and PostgreSQL through
`connectors.warehouse`; then, in the same run, inserts the same rows with the engine's plain bulk
path (DuckDB: INSERT ... SELECT from the registered pandas frame; PostgreSQL: COPY). Each
measurement runs in its own process so its peak RSS is its own. Only the write calls are timed, not
the generation of the rows. For DuckDB it also times publishing the analysts' snapshot of the
resulting file (CHECKPOINT + file copy) against re-encoding it with COPY FROM DATABASE.

    .venv/bin/python benchmarks/warehouse_upsert.py               # 1,000,000 rows
    .venv/bin/python benchmarks/warehouse_upsert.py --rows 50000  # quick

The last line is ``duckdb_upsert_vs_raw=<ratio>`` (upsert rows/s divided by raw rows/s).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from connectors.tables import ColumnSpec, ColumnType, TableSchema
from connectors.warehouse import DuckDBWarehouse, open_warehouse
from connectors.warehouse.duckdb_warehouse import SETTINGS as DUCKDB_SETTINGS
from connectors.warehouse.frames import stage

PORTAL = "bench.bitrix24.test"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/bitrix24_test"
STAGES = np.array(["NEW", "PREPARATION", "PREPAYMENT_INVOICE", "EXECUTING", "FINAL_INVOICE", "WON", "LOSE"],
                  dtype=object)

_T = ColumnType
DEAL_COLUMNS: tuple[tuple[str, ColumnType], ...] = (
    ("title", _T.TEXT), ("type_id", _T.TEXT), ("stage_id", _T.TEXT), ("category_id", _T.INTEGER),
    ("probability", _T.DOUBLE), ("currency_id", _T.TEXT), ("opportunity", _T.DECIMAL),
    ("tax_value", _T.DECIMAL), ("company_id", _T.INTEGER), ("contact_id", _T.INTEGER),
    ("begindate", _T.DATE), ("closedate", _T.DATE), ("opened", _T.BOOLEAN), ("closed", _T.BOOLEAN),
    ("is_new", _T.BOOLEAN), ("is_recurring", _T.BOOLEAN), ("comments", _T.TEXT),
    ("assigned_by_id", _T.INTEGER), ("created_by_id", _T.INTEGER), ("modify_by_id", _T.INTEGER),
    ("date_create", _T.TIMESTAMP), ("date_modify", _T.TIMESTAMP), ("moved_time", _T.TIMESTAMP),
    ("source_id", _T.TEXT), ("lead_id", _T.INTEGER), ("stage_semantic_id", _T.TEXT),
    ("utm_source", _T.TEXT), ("contact_ids", _T.JSON), ("uf_crm_budget", _T.DOUBLE),
    ("uf_crm_region", _T.TEXT), ("uf_crm_priority", _T.INTEGER),
)
SCHEMA = TableSchema("deals", tuple(ColumnSpec(name, kind, name.upper(), name.replace("_", " ").title(),
                                               is_user_field=name.startswith("uf_"))
                                    for name, kind in DEAL_COLUMNS))


def deal_frame(first_id: int, rows: int) -> pd.DataFrame:
    """Deals ``first_id + 1 ..``, typed like the source's entity frame; deterministic per chunk."""
    rng = np.random.default_rng(first_id)
    ids = np.arange(first_id + 1, first_id + rows + 1, dtype=np.int64)
    created = 1_700_000_000 + rng.integers(0, 30_000_000, rows)
    modified = created + rng.integers(0, 1_000_000, rows)
    opportunity = np.round(rng.random(rows) * 100_000, 2)
    decimal = pd.ArrowDtype(pa.decimal128(18, 2))
    date = pd.ArrowDtype(pa.date32())

    def text(values: object) -> pd.Series:
        return pd.Series(values, dtype="string")

    def integers(low: int, high: int) -> pd.Series:
        return pd.Series(rng.integers(low, high, rows), dtype="Int64")

    def days(seconds: np.ndarray) -> pd.Series:
        return pd.Series(pa.array(seconds // 86_400, pa.int32()).cast(pa.date32()), dtype=date)

    frame = pd.DataFrame({
        "id": ids,
        "title": text([f"Deal #{i}" for i in ids]),
        "type_id": text(np.full(rows, "SALE", dtype=object)),
        "stage_id": text(STAGES[rng.integers(0, len(STAGES), rows)]),
        "category_id": integers(0, 5),
        "probability": rng.integers(0, 100, rows).astype(np.float64),
        "currency_id": text(np.full(rows, "EUR", dtype=object)),
        "opportunity": pd.Series(pa.array(opportunity).cast(pa.decimal128(18, 2)), dtype=decimal),
        "tax_value": pd.Series(pa.array(np.round(opportunity * 0.19, 2)).cast(pa.decimal128(18, 2)),
                               dtype=decimal),
        "company_id": integers(1, 50_000),
        "contact_id": integers(1, 200_000),
        "begindate": days(created),
        "closedate": days(modified),
        "opened": pd.Series(rng.random(rows) < 0.5, dtype="boolean"),
        "closed": pd.Series(rng.random(rows) < 0.3, dtype="boolean"),
        "is_new": pd.Series(rng.random(rows) < 0.1, dtype="boolean"),
        "is_recurring": pd.Series(np.zeros(rows, bool), dtype="boolean"),
        "comments": text([None if i % 3 else "Call back next week; wants a discount" for i in ids]),
        "assigned_by_id": integers(1, 300),
        "created_by_id": integers(1, 300),
        "modify_by_id": integers(1, 300),
        "date_create": pd.to_datetime(created, unit="s", utc=True),
        "date_modify": pd.to_datetime(modified, unit="s", utc=True),
        "moved_time": pd.to_datetime(modified, unit="s", utc=True),
        "source_id": text(np.full(rows, "WEB", dtype=object)),
        "lead_id": integers(1, 100_000),
        "stage_semantic_id": text(np.full(rows, "P", dtype=object)),
        "utm_source": text(np.full(rows, "google", dtype=object)),
        "contact_ids": text([f"[{c}]" for c in rng.integers(1, 200_000, rows)]),
        "uf_crm_budget": rng.random(rows) * 1000,
        "uf_crm_region": text(np.full(rows, "North", dtype=object)),
        "uf_crm_priority": integers(1, 4),
    })
    frame["_source_modified_at"] = frame["date_modify"]
    # The record as a legacy list sends it: upper-case keys, every value a string (facts §4.3).
    wire = frame.drop(columns=["_source_modified_at"]).astype(str)
    wire.columns = [c.upper() for c in wire.columns]
    frame["_raw"] = pd.Series([orjson.dumps(r).decode() for r in wire.to_dict("records")], dtype="string")
    return frame


def chunks(rows: int, size: int) -> Iterator[pd.DataFrame]:
    for first in range(0, rows, size):
        yield deal_frame(first, min(size, rows - first))


# -- one measurement per process -------------------------------------------------------------------

def duckdb_upsert(rows: int, size: int, directory: Path) -> dict:
    path = directory / "upsert.duckdb"
    seconds = 0.0
    with DuckDBWarehouse(path) as warehouse:
        warehouse.ensure_table(SCHEMA)
        for frame in chunks(rows, size):
            started = time.perf_counter()
            with warehouse.transaction() as tx:
                tx.upsert(PORTAL, SCHEMA, frame)
            seconds += time.perf_counter() - started
        # Both DuckDB measurements end with a checkpoint, so neither leaves work in the WAL.
        started = time.perf_counter()
        warehouse.checkpoint()
        seconds += time.perf_counter() - started
        started = time.perf_counter()
        warehouse.publish_snapshot()
        publish = time.perf_counter() - started
        # The alternative publication: re-encode the database into a fresh file.
        alternative = directory / "copy-from-database.duckdb"
        started = time.perf_counter()
        warehouse._execute(f"ATTACH '{alternative}' AS copied")
        warehouse._execute("COPY FROM DATABASE upsert TO copied")
        warehouse._execute("DETACH copied")
        copy_from_database = time.perf_counter() - started
    return {"seconds": seconds, "publish_seconds": publish, "copy_from_database_seconds": copy_from_database,
            "file_bytes": path.stat().st_size}


def duckdb_raw(rows: int, size: int, directory: Path, settings: dict[str, str]) -> dict:
    import duckdb

    from connectors.warehouse.layout import DUCKDB

    path = directory / "raw.duckdb"
    path.unlink(missing_ok=True)
    connection = duckdb.connect(str(path))
    for name, value in settings.items():
        connection.execute(f"SET {name} = '{value}'")
    columns = ", ".join(f'"{name}" {DUCKDB.types[kind]}' for name, kind in DEAL_COLUMNS)
    connection.execute(f"CREATE TABLE deals (portal VARCHAR, id BIGINT, {columns}, "
                       f"_source_modified_at TIMESTAMPTZ, _raw JSON)")
    names = ", ".join(f'"{name}"' for name in ("id", *(n for n, _ in DEAL_COLUMNS), "_source_modified_at",
                                               "_raw"))
    seconds = 0.0
    for frame in chunks(rows, size):
        started = time.perf_counter()
        connection.register("frame", frame)
        connection.execute(f"INSERT INTO deals SELECT '{PORTAL}', {names} FROM frame").fetchall()
        connection.unregister("frame")
        seconds += time.perf_counter() - started
    started = time.perf_counter()
    connection.execute("CHECKPOINT")
    seconds += time.perf_counter() - started
    connection.close()
    return {"seconds": seconds}


def postgres_upsert(rows: int, size: int, dsn: str, schema: str) -> dict:
    seconds = 0.0
    with open_warehouse(dsn, schema=schema) as warehouse:
        warehouse.ensure_table(SCHEMA)
        for frame in chunks(rows, size):
            started = time.perf_counter()
            with warehouse.transaction() as tx:
                tx.upsert(PORTAL, SCHEMA, frame)
            seconds += time.perf_counter() - started
    return {"seconds": seconds}


def postgres_raw(rows: int, size: int, dsn: str, schema: str) -> dict:
    import io

    import psycopg
    import pyarrow.csv as csv

    from connectors.warehouse.layout import postgres_dialect

    dialect = postgres_dialect(schema)
    with psycopg.connect(dsn, autocommit=True) as connection:
        columns = ", ".join(f'"{name}" {dialect.types[kind]}' for name, kind in DEAL_COLUMNS)
        connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        connection.execute(f'CREATE TABLE "{schema}".deals_raw (portal text, id bigint, '
                           f"_source_modified_at timestamptz, _raw json, {columns})")
        seconds = 0.0
        for frame in chunks(rows, size):
            started = time.perf_counter()
            # The same encoding the warehouse uses: Arrow table -> CSV -> COPY, one commit per chunk.
            table = stage(SCHEMA, frame).table
            table = table.add_column(0, "portal", pa.array([PORTAL] * table.num_rows))
            buffer = io.BytesIO()
            csv.write_csv(table, buffer, csv.WriteOptions(include_header=False))
            names = ", ".join(f'"{name}"' for name in table.column_names)
            with connection.transaction(), connection.cursor() as cursor, \
                    cursor.copy(f'COPY "{schema}".deals_raw ({names}) FROM STDIN (FORMAT csv)') as copy:
                copy.write(buffer.getbuffer())
            seconds += time.perf_counter() - started
    return {"seconds": seconds}


def run_phase(args: argparse.Namespace) -> None:
    directory = Path(args.dir)
    schema = args.pg_schema
    phases = {
        "duckdb-upsert": lambda: duckdb_upsert(args.rows, args.chunk, directory),
        # The baseline runs with the warehouse's DuckDB settings, so the ratio measures the upsert.
        "duckdb-raw": lambda: duckdb_raw(args.rows, args.chunk, directory, DUCKDB_SETTINGS),
        "duckdb-raw-defaults": lambda: duckdb_raw(args.rows, args.chunk, directory, {}),
        "postgres-upsert": lambda: postgres_upsert(args.rows, args.chunk, args.dsn, schema),
        "postgres-raw": lambda: postgres_raw(args.rows, args.chunk, args.dsn, schema),
    }
    result = phases[args.phase]()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# -- driver ------------------------------------------------------------------------------------------

def measure(phase: str, args: argparse.Namespace, directory: Path, schema: str) -> dict:
    command = [sys.executable, __file__, "--phase", phase, "--rows", str(args.rows), "--chunk",
               str(args.chunk), "--dir", str(directory), "--dsn", args.dsn, "--pg-schema", schema]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=2_500)
    parser.add_argument("--engines", default="duckdb,postgres", help="comma-separated: duckdb,postgres")
    parser.add_argument("--dsn", default=os.environ.get("B24_TEST_PG_DSN", DEFAULT_DSN))
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--pg-schema", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        run_phase(args)
        return

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    print(f"{args.rows:,} deal rows ({len(DEAL_COLUMNS)} typed columns + _raw), chunks of {args.chunk:,}, "
          f"one transaction per chunk; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    ratios: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="warehouse-bench-") as scratch:
        for engine in engines:
            schema = f"bench_{os.getpid()}"
            try:
                upsert = measure(f"{engine}-upsert", args, Path(scratch), schema)
                raw = measure(f"{engine}-raw", args, Path(scratch), schema)
            finally:
                if engine == "postgres":
                    import psycopg

                    with psycopg.connect(args.dsn, autocommit=True) as connection:
                        connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            upsert_rate, raw_rate = args.rows / upsert["seconds"], args.rows / raw["seconds"]
            ratios[engine] = upsert_rate / raw_rate
            print(f"{engine:9} upsert {upsert_rate:>10,.0f} rows/s  ({upsert['seconds']:.1f} s, "
                  f"peak RSS {upsert['peak_rss_mb']:,.0f} MB)")
            print(f"{engine:9} raw    {raw_rate:>10,.0f} rows/s  ({raw['seconds']:.1f} s, "
                  f"peak RSS {raw['peak_rss_mb']:,.0f} MB)")
            print(f"{engine:9} upsert/raw = {ratios[engine]:.2f}")
            if engine == "duckdb":
                defaults = measure("duckdb-raw-defaults", args, Path(scratch), schema)
                print(f"duckdb    raw with DuckDB's default settings {args.rows / defaults['seconds']:>10,.0f} "
                      f"rows/s ({defaults['seconds']:.1f} s; the warehouse sets "
                      f"checkpoint_threshold={DUCKDB_SETTINGS['checkpoint_threshold']})")
                print(f"duckdb    snapshot of a {upsert['file_bytes'] / 2**20:,.0f} MB file: "
                      f"CHECKPOINT + copy {upsert['publish_seconds']:.2f} s, "
                      f"COPY FROM DATABASE {upsert['copy_from_database_seconds']:.2f} s")
    if "duckdb" in ratios:
        print(f"duckdb_upsert_vs_raw={ratios['duckdb']:.2f}")


if __name__ == "__main__":
    main()
