"""A SQL shell on the analysts' DuckDB snapshot, for machines without the ``duckdb`` CLI.

``python -m connectors.warehouse.shell [SNAPSHOT]`` opens the snapshot read-only (default
``.demo/warehouse.snapshot.duckdb``, the one ``make demo`` publishes), so the writer is never blocked.
SQL piped on stdin runs statement by statement and each result is printed as a table; at a terminal
it prompts, runs each statement when a line ends with ``;``, and stops on an empty line at the prompt,
``.quit`` or end of input. The analysts' views live in schema ``analytics`` (``SHOW ALL TABLES``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

import duckdb

DEFAULT_SNAPSHOT = Path(".demo/warehouse.snapshot.duckdb")
MAX_ROWS = 1000


def run_script(connection: duckdb.DuckDBPyConnection, text: str, out: TextIO) -> int:
    """Run every statement of ``text``, printing each result; returns how many failed."""
    failures = 0
    for statement in duckdb.extract_statements(text):
        try:
            relation = connection.sql(statement.query)
        except duckdb.Error as error:
            failures += 1
            print(f"error: {error}", file=out)
            continue
        if relation is not None:
            print(relation.fetchdf().to_string(index=False, max_rows=MAX_ROWS), file=out)
            print(file=out)
    return failures


def _interactive(connection: duckdb.DuckDBPyConnection) -> None:
    print("Read-only SQL on the analysts' snapshot; views are in schema analytics. "
          "End a statement with ';', quit with .quit or an empty line.")
    pending: list[str] = []
    while True:
        try:
            line = input("sql> " if not pending else "...> ")
        except EOFError:
            return
        if not pending and line.strip() in ("", ".quit", ".exit"):
            return
        pending.append(line)
        if line.rstrip().endswith(";"):
            run_script(connection, "\n".join(pending), sys.stdout)
            pending = []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connectors.warehouse.shell", description=__doc__.split("\n")[0])
    parser.add_argument("snapshot", nargs="?", type=Path, default=DEFAULT_SNAPSHOT,
                        help=f"the DuckDB snapshot file (default {DEFAULT_SNAPSHOT})")
    args = parser.parse_args(argv)
    if not args.snapshot.exists():
        print(f"no snapshot at {args.snapshot}: run `make demo` first (or pass the path)", file=sys.stderr)
        return 2
    with duckdb.connect(str(args.snapshot), read_only=True) as connection:
        if sys.stdin.isatty():
            _interactive(connection)
            return 0
        return 1 if run_script(connection, sys.stdin.read(), sys.stdout) else 0


if __name__ == "__main__":
    sys.exit(main())
