"""fast_bitrix24 + pandas + DuckDB, as its users write it (a peer in `benchmarks/side_by_side.py`).

Runs in the peers' own venv (fast_bitrix24, pandas and duckdb are not dependencies of the product).
``full``: ``get_all("crm.deal.list")`` without ``order``, a DataFrame, one ``CREATE TABLE AS``
(untyped: the legacy API's strings stay strings). ``changes``: ``get_all`` with ``>DATE_MODIFY``
since the last load, upserted in one transaction (delete the ids, insert the rows); deletions are
not visible to this method. Prints one JSON line: rows, CPU seconds, wall seconds, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import duckdb
import pandas as pd
from fast_bitrix24 import Bitrix
from own_peak import peak_rss_mb  # this directory


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for column in frame.columns:  # multiple and structured fields as JSON text, as DuckDB wants scalars
        if pd.api.types.infer_dtype(frame[column], skipna=True) not in ("string", "empty", "integer",
                                                                         "floating", "boolean"):
            frame[column] = frame[column].map(lambda value: json.dumps(value) if isinstance(value, list | dict)
                                              else value)
    return frame


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--webhook", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--work", choices=("full", "changes"), required=True)
    parser.add_argument("--since", default="")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    cpu, wall = time.process_time(), time.perf_counter()
    bitrix = Bitrix(args.webhook, verbose=False, ssl=False)
    params: dict = {"select": ["*", "UF_*"]}
    if args.work == "changes":
        params["filter"] = {">DATE_MODIFY": args.since}
    rows = bitrix.get_all("crm.deal.list", params=params)
    frame = _frame(rows)
    con = duckdb.connect(args.db)
    con.register("frame", frame)
    if args.work == "full":
        con.execute("CREATE OR REPLACE TABLE deals AS SELECT * FROM frame")
    else:
        con.execute("BEGIN")
        con.execute("DELETE FROM deals WHERE ID IN (SELECT ID FROM frame)")
        con.execute("INSERT INTO deals BY NAME SELECT * FROM frame")
        con.execute("COMMIT")
    con.close()
    print(json.dumps({"rows": len(rows), "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
                      "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
