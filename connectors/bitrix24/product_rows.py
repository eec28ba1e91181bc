"""Deal product rows by deal: ``crm.item.productrow.list``, one command per deal, 50 deals per batch.

The method takes exactly one owner (``=ownerType`` ``D`` and ``=ownerId``; no array of owners) and
pages by 50 ([D] api-reference/crm/universal/product-rows/crm-item-productrow-list.md), so a batch
reads the rows of 50 deals; a deal with 50 rows or more is read on with ``>id`` in the next batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from connectors.bitrix24.batch import MAX_COMMANDS, Command
from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.errors import MalformedResponse
from connectors.dimensions import DEAL_PRODUCT_ROWS

PAGE_SIZE = 50


def read_product_rows(client: Bitrix24Client, deal_ids: Iterable[int]) -> tuple[pd.DataFrame, int]:
    """Every product row of the given deals as a `DEAL_PRODUCT_ROWS` frame, and the requests made.

    A deal that has no rows (or no longer exists) simply contributes none."""
    pending = {int(deal_id): 0 for deal_id in deal_ids}  # deal -> last row id read
    rows: list[dict[str, Any]] = []
    requests = 0
    while pending:
        chunk = list(pending.items())[:MAX_COMMANDS]
        commands = {f"d{deal_id}": Command("crm.item.productrow.list", {
            "filter": {"=ownerType": "D", "=ownerId": deal_id, ">id": last_id},
            "order": {"id": "ASC"}, "start": -1}) for deal_id, last_id in chunk}
        outcome = client.batch(commands)
        requests += 1
        for deal_id, _ in chunk:
            result = outcome.result(f"d{deal_id}")
            page = result.get("productRows") if isinstance(result, Mapping) else None
            if not isinstance(page, list):
                raise MalformedResponse("crm.item.productrow.list", 200, "no productRows array", repr(result)[:200])
            rows.extend(_row(deal_id, row) for row in page)
            if len(page) < PAGE_SIZE:
                del pending[deal_id]
            else:
                pending[deal_id] = int(page[-1]["id"])
    return (pd.DataFrame(rows, columns=list(DEAL_PRODUCT_ROWS.column_names)) if rows else empty_product_rows(),
            requests)


def empty_product_rows() -> pd.DataFrame:
    return pd.DataFrame([], columns=list(DEAL_PRODUCT_ROWS.column_names))


def _row(deal_id: int, row: Mapping) -> dict[str, Any]:
    return {
        "id": int(row["id"]), "owner_id": deal_id, "product_id": row.get("productId"),
        "product_name": row.get("productName"), "price": _money(row.get("price")),
        "quantity": row.get("quantity"), "discount_sum": _money(row.get("discountSum")),
        "tax_rate": row.get("taxRate"), "measure_name": row.get("measureName") or None, "sort": row.get("sort"),
    }


def _money(value: Any) -> str | None:
    # Two decimals as text: the warehouse casts to its money type without a float detour.
    return None if value is None else f"{float(value):.2f}"
