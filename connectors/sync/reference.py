"""Reference data and stage history of one portal, end to end: read from Bitrix24, write to the warehouse.

`refresh_reference` replaces every dimension of the portal (two batch requests, one transaction)
and rebuilds the analysts' schema; `sync_stage_history` appends new stage-history rows after the
stored high-water marks, committing rows and marks together per chunk. Both are idempotent: run
them again after a crash at any point and the warehouse ends the same, with nothing lost and no
duplicate (facts §4.8; DESIGN §3 crash rule).
"""

from __future__ import annotations

from dataclasses import dataclass

from connectors.bitrix24 import Bitrix24Client
from connectors.bitrix24.reference import load_reference, read_stage_history, stage_history_types
from connectors.sync.failpoints import failpoint
from connectors.warehouse.analytics import publish_analytics
from connectors.warehouse.reference import (
    append_stage_history,
    ensure_reference_tables,
    replace_dimensions,
    stage_history_marks,
)
from connectors.warehouse.sql_warehouse import SqlWarehouse

# Requests per stage-history commit: 50 pages of 50 rows = 2,500 rows per request at most.
HISTORY_REQUESTS_PER_COMMIT = 1


@dataclass(frozen=True)
class ReferenceRefresh:
    rows: dict[str, int]  # rows per dimension table
    requests: int  # HTTP requests to the portal
    smart_process_types: tuple[int, ...]
    analytics: tuple[str, ...]  # relations of the analysts' schema


@dataclass(frozen=True)
class StageHistorySync:
    rows: int  # new rows stored
    requests: int
    marks: dict[int, int]  # entity type -> last history id stored


def refresh_reference(client: Bitrix24Client, warehouse: SqlWarehouse, portal: str, *,
                      publish: bool = True) -> ReferenceRefresh:
    """Load every dimension of ``portal`` and replace its rows atomically; rebuild the analysts' views."""
    ensure_reference_tables(warehouse)
    reference = load_reference(client)
    rows = replace_dimensions(warehouse, portal, reference.frames)
    analytics = tuple(publish_analytics(warehouse)) if publish else ()
    return ReferenceRefresh(rows, reference.requests, reference.smart_process_types, analytics)


def sync_stage_history(client: Bitrix24Client, warehouse: SqlWarehouse, portal: str,
                       smart_process_types: tuple[int, ...], *, max_requests: int | None = None) -> StageHistorySync:
    """Append the portal's new stage-history rows (leads, deals, every smart process) by id.

    Each chunk of rows is committed with the marks it reached; a crash between the read and the
    commit (failpoint ``stage_history_fetched``) leaves the old marks, so the next run reads the same
    rows again, and the table's key keeps them once."""
    ensure_reference_tables(warehouse)
    stored = stage_history_marks(warehouse, portal)
    marks = {entity_type_id: stored.get(entity_type_id, 0)
             for entity_type_id in stage_history_types(smart_process_types)}
    total_rows = 0
    requests = 0
    while max_requests is None or requests < max_requests:
        chunk = read_stage_history(client, marks, max_requests=HISTORY_REQUESTS_PER_COMMIT)
        requests += chunk.requests
        failpoint("stage_history_fetched")
        total_rows += append_stage_history(warehouse, portal, chunk.frame, chunk.marks)
        marks = chunk.marks
        if chunk.done:
            break
    return StageHistorySync(total_rows, requests, marks)
