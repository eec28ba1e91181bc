"""The value policy through the real CDC loop: odd values a portal holds never block or drop a change.

Under test is DESIGN §3 point 9 end to end: `connectors.sync.steps.run_once` over the emulator into a
real DuckDB file and a fresh schema of the real PostgreSQL server. A value that cannot become its
column's type lands as NULL with ``_raw`` keeping it, counted per (table, column) in the committed
manifest; the record loads, its other fields are current, the queue is empty and nothing is parked
in the error lane. Text is made storable per engine: PostgreSQL gets it without NUL (its ``text``
refuses the byte, its ``jsonb`` the ``\\u0000`` escape), DuckDB keeps it exactly.

The odd values are put straight into the emulator's stored rows, as imports, old portal versions or
direct database edits leave them; a user's edit beside them queues the change.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from connectors.bitrix24 import Bitrix24Client, FileTokenStore
from connectors.bitrix24.schema import snake_case
from connectors.sync.portal import DEFAULT_CONNECTOR, PortalSync
from connectors.sync.staging import Committed
from connectors.sync.steps import run_once
from emulator.events import Origin
from emulator.testing import ThreadEmulator, run_emulator
from tests.sync.conftest import PORTAL, app_keys
from tests.warehouse.conftest import WarehouseTarget

COUNTS = {"deal": 40, "contact": 3, "company": 1, "lead": 1, "activity": 3, "item": 3}
USER = Origin(user_id=2)

# Deal user fields, one per column type: (requested name, USER_TYPE_ID, multiple).
USER_FIELDS = [("TXT", "string", False), ("INT", "integer", False), ("DBL", "double", False),
               ("MONEY", "money", False), ("DAY", "date", False), ("WHEN", "datetime", False),
               ("FLAG", "boolean", False), ("KIND", "enumeration", False), ("TAGS", "string", True),
               ("SCAN", "file", False), ("OFFICE", "address", False)]


JSON_COLUMNS = {"uf_crm_tags", "uf_crm_scan", "uf_crm_office"}


def read(target: WarehouseTarget, table: str, column: str, ids: list[int]) -> dict[int, Any]:
    """``column`` of the rows ``ids``; JSON columns and ``_raw`` parsed."""
    textual = column == "_raw" or column in JSON_COLUMNS
    select = f'CAST("{column}" AS VARCHAR)' if textual else f'"{column}"'
    with target.open() as warehouse:
        rows = warehouse.query(f"SELECT id, {select} FROM {warehouse.relation(table)} WHERE portal = %(portal)s "
                               f"AND id IN (SELECT unnest(%(ids)s::bigint[]))", {"portal": PORTAL, "ids": ids})
    return {row[0]: json.loads(row[1]) if textual and row[1] is not None else row[1] for row in rows}


def raw_as_jsonb_title(target: WarehouseTarget, table: str, field: str, entity_id: int) -> str:
    """PostgreSQL's own reading of ``_raw`` as jsonb (fails on a ``\\u0000`` escape)."""
    with target.open() as warehouse:
        return warehouse.query(f"SELECT (_raw::jsonb) ->> %(field)s FROM {warehouse.relation(table)} "
                               f"WHERE id = %(id)s", {"field": field, "id": entity_id})[0][0]


@pytest.fixture
def emu() -> Iterator[ThreadEmulator]:
    with run_emulator(limits=False, counts=COUNTS, seed=7) as running:
        crm = running.world.portal(PORTAL).crm
        for name, user_type, multiple in USER_FIELDS:
            crm.add_user_field("deal", name, user_type, multiple=multiple,
                               items=("Retail", "Wholesale") if user_type == "enumeration" else ())
        yield running


def sync(emu: ThreadEmulator, tokens: FileTokenStore, target: WarehouseTarget, staging: Path,
         mode: str = "changes") -> dict[str, dict]:
    """One run of the loop; returns the committed manifest's coercions per table."""
    app = app_keys(emu)
    with Bitrix24Client(app.session(PORTAL, tokens)) as client, target.open() as warehouse:
        committed = run_once(PortalSync(PORTAL, client, warehouse, staging), mode)
    return {table: outcome.coerced for table, outcome in Committed.read(committed).tables.items()}


def store_odd_values(emu: ThreadEmulator, entity: str, entity_id: int, written: dict[str, Any],
                     stored: dict[str, Any]) -> None:
    """A user's edit (``written``, queued as a change), then ``stored`` put into the row as is."""
    crm = emu.world.portal(PORTAL).crm
    crm.write(entity, "update", entity_id, written, USER)
    table = crm.table(entity)
    with crm.portal.lock:
        table.rows[entity_id] = {**table.rows[entity_id], **stored}


def our_queue(emu: ThreadEmulator) -> list[dict]:
    return [row for row in emu.queue() if row["CONNECTOR_ID"] == DEFAULT_CONNECTOR]


def smart_process(emu: ThreadEmulator) -> tuple[str, str]:
    """(entity key, warehouse table) of the emulator's smart-process type."""
    key = next(key for key in emu.world.portal(PORTAL).crm.entities() if key.startswith("item:"))
    return key, f"items_{key.split(':')[1]}"


# --- the cases ---------------------------------------------------------------------------


def test_a_nul_byte_in_text_loads_everywhere_without_nul_in_postgres_and_exactly_in_duckdb(
        emu: ThreadEmulator, tokens: FileTokenStore, warehouse_target: WarehouseTarget, tmp_path: Path) -> None:
    sync(emu, tokens, warehouse_target, tmp_path / "s0", mode="full_resync")
    item_key, item_table = smart_process(emu)
    cases = [("deal", "deals", "TITLE", "title"), ("contact", "contacts", "NAME", "name"),
             ("activity", "activities", "DESCRIPTION", "description"), (item_key, item_table, "TITLE", "title")]
    for entity, _, field, _ in cases:
        store_odd_values(emu, entity, 1, {}, {field: "Invoice\x00 #1"})
        store_odd_values(emu, entity, 2, {}, {field: "An ordinary text"})

    coerced = sync(emu, tokens, warehouse_target, tmp_path / "s1")

    assert our_queue(emu) == []
    assert all(not columns for columns in coerced.values())  # text is not a coercion
    wire_field = {"TITLE": "title"}  # crm.item names the field in camelCase
    for entity, table, field, column in cases:
        kept = "Invoice #1" if warehouse_target.engine == "postgres" else "Invoice\x00 #1"
        assert read(warehouse_target, table, column, [1, 2]) == {1: kept, 2: "An ordinary text"}, table
        raw_field = wire_field.get(field, field) if entity.startswith("item:") else field
        assert read(warehouse_target, table, "_raw", [1])[1][raw_field] == kept
        if warehouse_target.engine == "postgres":
            assert raw_as_jsonb_title(warehouse_target, table, raw_field, 1) == "Invoice #1"


def test_an_integer_user_field_at_2_63_loads_the_record_with_null_and_keeps_the_value_in_raw(
        emu: ThreadEmulator, tokens: FileTokenStore, warehouse_target: WarehouseTarget, tmp_path: Path) -> None:
    item_key, item_table = smart_process(emu)
    item_field = emu.world.portal(PORTAL).crm.add_user_field(item_key, "BIG", "integer")
    item_column = snake_case(item_field.camel)
    sync(emu, tokens, warehouse_target, tmp_path / "s0", mode="full_resync")
    store_odd_values(emu, "deal", 3, {"TITLE": "big number"}, {"UF_CRM_INT": "9223372036854775808"})
    store_odd_values(emu, "deal", 4, {"TITLE": "largest"}, {"UF_CRM_INT": "9223372036854775807"})
    # crm.item prints it as a JSON number (facts §4.4).
    store_odd_values(emu, item_key, 1, {"TITLE": "big item"}, {item_field.name: "9223372036854775808"})

    coerced = sync(emu, tokens, warehouse_target, tmp_path / "s1")

    assert our_queue(emu) == []
    assert read(warehouse_target, "deals", "uf_crm_int", [3, 4]) == {3: None, 4: 9223372036854775807}
    assert read(warehouse_target, "deals", "title", [3]) == {3: "big number"}
    assert read(warehouse_target, "deals", "_raw", [3])[3]["UF_CRM_INT"] == "9223372036854775808"
    assert coerced["deals"] == {"uf_crm_int": {"count": 1, "examples": [[3, "'9223372036854775808'"]]}}
    assert read(warehouse_target, item_table, item_column, [1]) == {1: None}
    assert read(warehouse_target, item_table, "title", [1]) == {1: "big item"}
    assert read(warehouse_target, item_table, "_raw", [1])[1][item_field.camel] == 9223372036854775808
    assert coerced[item_table] == {item_column: {"count": 1, "examples": [[1, "9223372036854775808"]]}}


@pytest.mark.parametrize(("field", "value", "column", "counted"), [
    ("UF_CRM_MONEY", "|RUB", "uf_crm_money", False),  # the portal's empty amount: not a failure
    ("UF_CRM_MONEY", "abc|", "uf_crm_money", True),
    ("UF_CRM_DBL", "NaN", "uf_crm_dbl", True),
])
def test_a_value_the_converter_rejects_still_lets_the_change_land(
        emu: ThreadEmulator, tokens: FileTokenStore, warehouse_target: WarehouseTarget, tmp_path: Path, field: str,
        value: str, column: str, counted: bool) -> None:
    store_odd_values(emu, "deal", 5, {}, {"UF_CRM_MONEY": "10.00|USD", "UF_CRM_DBL": "1.50"})
    sync(emu, tokens, warehouse_target, tmp_path / "s0", mode="full_resync")
    assert read(warehouse_target, "deals", column, [5]) in ({5: Decimal("10.00")}, {5: 1.5})

    store_odd_values(emu, "deal", 5, {"TITLE": "Renamed with an odd value"}, {field: value})
    coerced = sync(emu, tokens, warehouse_target, tmp_path / "s1")

    assert our_queue(emu) == []  # acknowledged, and nothing waits in the error lane
    assert read(warehouse_target, "deals", "title", [5]) == {5: "Renamed with an odd value"}
    assert read(warehouse_target, "deals", column, [5]) == {5: None}
    assert read(warehouse_target, "deals", "_raw", [5])[5][field] == value
    expected = {column: {"count": 1, "examples": [[5, repr(value)]]}} if counted else {}
    assert coerced["deals"] == expected
    if field == "UF_CRM_MONEY":
        assert read(warehouse_target, "deals", "uf_crm_money_currency", [5]) == {5: "RUB" if value == "|RUB" else None}


# --- the whole kind: odd values per column type --------------------------------------------------

NULLED, EMPTY, KEPT = "nulled", "empty", "kept"
ODD_VALUES = [
    # (user field, stored value, column, value the warehouse holds, how the policy treats it)
    ("UF_CRM_TXT", {"nested": ["x"]}, "uf_crm_txt", '{"nested":["x"]}', KEPT),
    ("UF_CRM_TXT", "tab\there\r\nand \"quotes\", commas", "uf_crm_txt", "tab\there\r\nand \"quotes\", commas", KEPT),
    ("UF_CRM_INT", "9223372036854775808", "uf_crm_int", None, NULLED),
    ("UF_CRM_INT", "-9223372036854775809", "uf_crm_int", None, NULLED),
    ("UF_CRM_INT", "12abc", "uf_crm_int", None, NULLED),
    ("UF_CRM_INT", ["17"], "uf_crm_int", 17, KEPT),
    ("UF_CRM_DBL", "NaN", "uf_crm_dbl", None, NULLED),
    ("UF_CRM_DBL", "inf", "uf_crm_dbl", None, NULLED),
    ("UF_CRM_DBL", "1e400", "uf_crm_dbl", None, NULLED),
    ("UF_CRM_DBL", "", "uf_crm_dbl", None, EMPTY),
    ("UF_CRM_MONEY", "|RUB", "uf_crm_money", None, EMPTY),
    ("UF_CRM_MONEY", "|RUB", "uf_crm_money_currency", "RUB", KEPT),
    ("UF_CRM_MONEY", "abc|", "uf_crm_money", None, NULLED),
    ("UF_CRM_MONEY", "99999999999999999|USD", "uf_crm_money", None, NULLED),  # beyond DECIMAL(18, 2)
    ("UF_CRM_MONEY", "100.505|USD", "uf_crm_money", Decimal("100.51"), KEPT),
    ("UF_CRM_MONEY", "100.505|USD", "uf_crm_money_currency", "USD", KEPT),
    ("UF_CRM_DAY", "0000-00-00", "uf_crm_day", None, EMPTY),
    ("UF_CRM_DAY", "0000-00-00T00:00:00+03:00", "uf_crm_day", None, EMPTY),
    ("UF_CRM_DAY", "31.12.2024", "uf_crm_day", None, NULLED),
    ("UF_CRM_DAY", "1990-05-01T00:00:00+03:00", "uf_crm_day", date(1990, 5, 1), KEPT),
    ("UF_CRM_WHEN", "0000-00-00 00:00:00", "uf_crm_when", None, EMPTY),
    ("UF_CRM_WHEN", "", "uf_crm_when", None, EMPTY),
    ("UF_CRM_WHEN", "not a time", "uf_crm_when", None, NULLED),
    ("UF_CRM_WHEN", "2024-05-01T10:00:00+03:00", "uf_crm_when", datetime(2024, 5, 1, 7, tzinfo=UTC), KEPT),
    ("UF_CRM_FLAG", "maybe", "uf_crm_flag", None, NULLED),
    ("UF_CRM_FLAG", "1", "uf_crm_flag", True, KEPT),
    ("UF_CRM_KIND", {"ID": "101", "VALUE": "Retail"}, "uf_crm_kind", '{"ID":"101","VALUE":"Retail"}', KEPT),
    ("UF_CRM_KIND", "101", "uf_crm_kind", "101", KEPT),
    ("UF_CRM_TAGS", "one", "uf_crm_tags", "one", KEPT),  # a scalar where a list is expected
    ("UF_CRM_TAGS", False, "uf_crm_tags", False, KEPT),  # legacy lists print an empty multiple as false
    ("UF_CRM_TAGS", ["a\x00b", "c"], "uf_crm_tags", ["a\x00b", "c"], KEPT),
    ("UF_CRM_SCAN", {"id": 9, "showUrl": "/show/9", "name": "scan\x00.pdf"}, "uf_crm_scan",
     {"id": 9, "showUrl": "/show/9", "name": "scan\x00.pdf"}, KEPT),
    ("UF_CRM_SCAN", "", "uf_crm_scan", "", KEPT),
    ("UF_CRM_OFFICE", "Lenina 1|55.75;37.61", "uf_crm_office", "Lenina 1|55.75;37.61", KEPT),
    ("UF_CRM_OFFICE", {"city": {"ru": "Казань"}}, "uf_crm_office", {"city": {"ru": "Казань"}}, KEPT),
]


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {key: _without_nul(item) for key, item in value.items()}
    return value


def test_odd_values_of_every_column_type_land_as_their_value_or_a_counted_null(
        emu: ThreadEmulator, tokens: FileTokenStore, warehouse_target: WarehouseTarget, tmp_path: Path) -> None:
    sync(emu, tokens, warehouse_target, tmp_path / "s0", mode="full_resync")
    by_deal = {}
    for number, (field, value, *_rest) in enumerate(ODD_VALUES, start=1):
        deal = by_deal.setdefault((field, repr(value)), number)
        if deal == number:
            store_odd_values(emu, "deal", deal, {"TITLE": f"odd {field}"}, {field: value})

    coerced = sync(emu, tokens, warehouse_target, tmp_path / "s1")

    assert our_queue(emu) == []
    wrong = []
    expected_counts: dict[str, int] = {}
    for field, value, column, expected, treatment in ODD_VALUES:
        deal = by_deal[(field, repr(value))]
        if warehouse_target.engine == "postgres":
            expected = _without_nul(expected)
        if read(warehouse_target, "deals", column, [deal]) != {deal: expected}:
            wrong.append((field, value, column, read(warehouse_target, "deals", column, [deal])))
        if read(warehouse_target, "deals", "title", [deal]) != {deal: f"odd {field}"}:
            wrong.append((field, value, "title not updated"))
        raw = read(warehouse_target, "deals", "_raw", [deal])[deal][field]
        if raw != (_without_nul(value) if warehouse_target.engine == "postgres" else value):
            wrong.append((field, value, "_raw", raw))
        if treatment == NULLED:
            expected_counts[column] = expected_counts.get(column, 0) + 1
    assert wrong == []
    assert {column: entry["count"] for column, entry in coerced["deals"].items()} == expected_counts
    big = by_deal[("UF_CRM_INT", "'9223372036854775808'")]
    assert [big, "'9223372036854775808'"] in coerced["deals"]["uf_crm_int"]["examples"]
