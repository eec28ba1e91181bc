"""Reference data, stage history and deal product rows of one portal: from Bitrix24 to the warehouse.

`refresh_reference` replaces every dimension of the portal (two batch requests, one transaction)
and rebuilds the analysts' schema (the schedule's refresh; a sync run that reserves reference-data
events does the same within its own commit, `connectors.sync.steps`); `sync_stage_history`
appends new stage-history rows after the stored high-water marks, committing rows and marks
together per chunk; `sync_product_rows` re-reads the product rows of the deals written since its
last run. All are idempotent: run
them again after a crash at any point and the warehouse ends the same, with nothing lost and no
duplicate (facts §4.8; DESIGN §3 crash rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from connectors.bitrix24 import Bitrix24Client
from connectors.bitrix24.product_rows import empty_product_rows, read_product_rows
from connectors.bitrix24.reference import load_reference, read_stage_history, stage_history_types
from connectors.sync.failpoints import failpoint
from connectors.warehouse.analytics import publish_analytics
from connectors.warehouse.reference import (
    append_stage_history,
    deals_changed_since,
    ensure_reference_tables,
    product_rows_mark,
    replace_dimensions,
    replace_product_rows,
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


# Deals committed by a transaction that began before the newest `_synced_at` we saw may become
# visible after it (PostgreSQL, several writers): re-reading this window again costs little.
PRODUCT_ROWS_OVERLAP = timedelta(minutes=10)
DEALS_PER_COMMIT = 2_500  # 50 requests of 50 deals


@dataclass(frozen=True)
class ProductRowsSync:
    deals: int  # deals whose rows were re-read
    rows: int  # rows stored for them
    requests: int


def sync_product_rows(client: Bitrix24Client, warehouse: SqlWarehouse, portal: str, *,
                      overlap: timedelta = PRODUCT_ROWS_OVERLAP) -> ProductRowsSync:
    """Re-read the product rows of every deal written to the warehouse since the last run (all deals
    the first time); rows of deleted deals go. Each chunk replaces its deals' rows in one transaction,
    and the mark moves with the last chunk, so a crash re-reads (idempotently) instead of skipping.
    Deals written within ``overlap`` before the mark are read again (see `PRODUCT_ROWS_OVERLAP`)."""
    mark = product_rows_mark(warehouse, portal)
    live, gone, newest = deals_changed_since(warehouse, portal, None if mark is None else mark - overlap)
    stored = requests = 0
    chunks = [live[start:start + DEALS_PER_COMMIT] for start in range(0, len(live), DEALS_PER_COMMIT)] or [[]]
    for index, deal_ids in enumerate(chunks):
        frame, used = read_product_rows(client, deal_ids) if deal_ids else (empty_product_rows(), 0)
        requests += used
        failpoint("product_rows_fetched")
        last = index == len(chunks) - 1
        stored += replace_product_rows(warehouse, portal, deal_ids + (gone if last else []), frame,
                                       newest if last else None)
    return ProductRowsSync(len(live), stored, requests)
