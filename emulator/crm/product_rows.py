"""Deal product rows: ``crm.item.productrow.list`` and ``crm.item.productrow.set``.

Rows are kept per deal in the crm.item style ([D] api-reference/crm/universal/product-rows/):
camelCase keys, native numbers, ids portal-wide. ``list`` requires ``=ownerType`` and ``=ownerId``
(else 400 ``REQUIRED_ARG_MISSING``), filters ``id`` (with prefixes, ``@id`` as the only array) and
``productId``, orders by ``id`` or ``sort`` (default ``sort``) and pages by 50. ``set`` replaces a
deal's rows; the deal is updated with it (a new modification time and ``ONCRMDEALUPDATE``), which is
how a consumer learns the rows changed. Only deals (``ownerType`` ``D``) are emulated.
"""

from __future__ import annotations

import random
from typing import Any

from emulator.crm.legacy_methods import origin_of
from emulator.crm.phpish import array_values, intval
from emulator.crm.query import PAGE_SIZE, split_key
from emulator.crm.store import CrmStore, EntityNotFound
from emulator.errors import RestError
from emulator.registry import CallContext, Page, param, rest_method

PRODUCTS = (("Consulting hour", 120.0), ("Licence, annual", 990.0), ("Support plan", 450.0),
            ("Installation", 300.0), ("Training day", 800.0), ("Hardware kit", 1450.0))


class RequiredArgMissing(RestError):
    code = "REQUIRED_ARG_MISSING"


class ProductRows:
    """Product rows of every deal of a portal (``portal.crm.product_rows``)."""

    def __init__(self) -> None:
        self.by_deal: dict[int, list[dict[str, Any]]] = {}
        self.last_id = 0

    def row(self, deal_id: int, product_id: int, name: str, price: float, quantity: float, sort: int) -> dict:
        self.last_id += 1
        return {
            "id": self.last_id, "ownerId": deal_id, "ownerType": "D", "productId": product_id,
            "productName": name, "price": price, "priceAccount": price, "priceExclusive": price,
            "priceNetto": price, "priceBrutto": price, "quantity": quantity, "discountTypeId": 2,
            "discountRate": 0, "discountSum": 0, "taxRate": None, "taxIncluded": "N", "taxName": "",
            "customized": "Y", "measureCode": 796, "measureName": "pcs", "sort": sort, "xmlId": "",
            "type": 1, "storeId": None,
        }

    def seed(self, deal_ids: list[int], seed: int) -> None:
        """Zero to three rows per seeded deal, from their own random stream (the deals stay as seeded)."""
        draw = random.Random(f"{seed}:product-rows")
        for deal_id in deal_ids:
            rows = []
            for index in range(draw.choice((0, 1, 1, 2, 3))):
                product_id = draw.randrange(len(PRODUCTS))
                name, price = PRODUCTS[product_id]
                rows.append(self.row(deal_id, product_id + 1, name, price, float(draw.randint(1, 5)),
                                     10 * (index + 1)))
            if rows:
                self.by_deal[deal_id] = rows


def _store(ctx: CallContext) -> CrmStore:
    return ctx.portal.crm


def _owner(raw_filter: dict[str, Any]) -> int:
    owner_type, owner_id = raw_filter.get("=ownerType"), raw_filter.get("=ownerId")
    if owner_type in (None, "") or owner_id in (None, ""):
        raise RequiredArgMissing("Required fields: =ownerType, =ownerId")
    if str(owner_type) != "D":
        raise RestError(f"Owner type {owner_type} is not supported here", code="OWNER_NOT_FOUND")
    return intval(owner_id)


_COMPARE = {"": lambda a, b: a == b, "=": lambda a, b: a == b, "!=": lambda a, b: a != b,
            ">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b}


@rest_method("crm.item.productrow.list", scope="crm")
def productrow_list(ctx: CallContext, params: dict) -> Page:
    raw_filter = param(params, "filter") or {}
    if not isinstance(raw_filter, dict):
        raise RequiredArgMissing("Required fields: =ownerType, =ownerId")
    owner_id = _owner(raw_filter)
    store = _store(ctx)
    with ctx.portal.lock:
        # A deleted deal's rows went to the recycle bin with it.
        live = owner_id in store.table("deal").rows
        rows = [dict(row) for row in store.product_rows.by_deal.get(owner_id, [])] if live else []
    for key, value in raw_filter.items():
        operation, name = split_key(str(key))
        if name not in ("id", "productId"):
            continue  # unindexed and unknown fields are ignored, as the docs say
        if operation == "@":
            if name == "id":
                accepted = {intval(item) for item in array_values(value) or []}
                rows = [row for row in rows if row["id"] in accepted]
            continue
        if isinstance(value, list | dict) or operation not in _COMPARE:
            continue
        compare, target = _COMPARE[operation], intval(value)
        rows = [row for row in rows if compare(row[name], target)]
    order = param(params, "order") or {"sort": "asc"}
    for name, direction in reversed(list(order.items()) if isinstance(order, dict) else []):
        if name in ("id", "sort"):
            rows.sort(key=lambda row, name=name: row[name], reverse=str(direction).lower() == "desc")
    start = intval(param(params, "start", 0))
    if start < 0:
        return Page({"productRows": rows[:PAGE_SIZE]})
    start = start // PAGE_SIZE * PAGE_SIZE
    page = rows[start:start + PAGE_SIZE]
    more = start + len(page) < len(rows)
    return Page({"productRows": page}, total=len(rows), next=start + PAGE_SIZE if more else None)


@rest_method("crm.item.productrow.set", scope="crm")
def productrow_set(ctx: CallContext, params: dict) -> dict[str, Any]:
    owner_type, owner_id = param(params, "ownerType"), intval(param(params, "ownerId"))
    if owner_type in (None, "") or owner_id <= 0:
        raise RequiredArgMissing("Required fields: ownerType, ownerId")
    if str(owner_type) != "D":
        raise RestError(f"Owner type {owner_type} is not supported here", code="OWNER_NOT_FOUND")
    wanted = [row for row in array_values(param(params, "productRows")) or [] if isinstance(row, dict)]
    try:
        rows = set_product_rows(_store(ctx), owner_id, wanted, origin_of(ctx))
    except EntityNotFound:
        raise RestError("Owner not found", code="OWNER_NOT_FOUND") from None
    return {"productRows": rows}


def set_product_rows(store: CrmStore, deal_id: int, wanted: list[dict[str, Any]], origin: Any) -> list[dict]:
    """Replace a deal's rows and update the deal (modification time, ``ONCRMDEALUPDATE``)."""
    with store.portal.lock:
        if deal_id not in store.table("deal").rows:
            raise EntityNotFound("deal", deal_id)
        rows = [store.product_rows.row(deal_id, intval(row.get("productId")), str(row.get("productName") or ""),
                                       float(row.get("price") or 0), float(row.get("quantity") or 1),
                                       intval(row.get("sort")) or 10 * (index + 1))
                for index, row in enumerate(wanted)]
        if rows:
            store.product_rows.by_deal[deal_id] = rows
        else:
            store.product_rows.by_deal.pop(deal_id, None)
        store.update("deal", deal_id, {}, origin)
        return [dict(row) for row in rows]
