"""dlt's ``rest_api`` source into DuckDB, as its users write it (a peer in `benchmarks/side_by_side.py`).

Runs in the peers' own venv (dlt is not a dependency of the product). The source pages
``crm.deal.list`` with Bitrix24's own cursor (``next`` in the answer, sent back as ``start``; facts
§4.1), no column types declared (dlt infers them), nested values kept as JSON
(``max_table_nesting=0``), primary key ``ID``. ``full``: write disposition ``replace``.
``changes``: the same resource filtered on ``>DATE_MODIFY`` since the last load, merged (dlt's
delete-insert in one transaction); deletions are not visible to this method. Prints one JSON line:
rows, CPU seconds, wall seconds, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from own_peak import peak_rss_mb  # this directory


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--webhook", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--work", choices=("full", "changes"), required=True)
    parser.add_argument("--since", default="")
    parser.add_argument("--pipelines-dir", required=True)
    args = parser.parse_args()
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")

    import dlt
    from dlt.sources.helpers.rest_client.paginators import JSONResponseCursorPaginator
    from dlt.sources.rest_api import rest_api_source

    cpu, wall = time.process_time(), time.perf_counter()
    params: dict = {"select[]": ["*", "UF_*"]}
    if args.work == "changes":
        params["filter[>DATE_MODIFY]"] = args.since
    source = rest_api_source({
        "client": {"base_url": args.webhook,
                   "paginator": JSONResponseCursorPaginator(cursor_path="next", cursor_param="start")},
        "resource_defaults": {"primary_key": "ID",
                              "write_disposition": "replace" if args.work == "full" else "merge"},
        "resources": [{"name": "deals", "endpoint": {"path": "crm.deal.list", "params": params,
                                                     "data_selector": "result"}}],
    }, max_table_nesting=0)
    pipeline = dlt.pipeline(pipeline_name="bitrix24_deals", destination=dlt.destinations.duckdb(args.db),
                            dataset_name="crm", pipelines_dir=args.pipelines_dir)
    info = pipeline.run(source)
    rows = pipeline.last_trace.last_normalize_info.row_counts.get("deals", 0)
    info.raise_on_failed_jobs()
    print(json.dumps({"rows": rows, "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
                      "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
