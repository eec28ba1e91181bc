"""Compare a warehouse with the emulator's ground truth: the invariant every sync test ends on.

DESIGN §3: after the loop has run to completion, the warehouse holds every object's current state or
its tombstone, once. Checked per entity kind: the same ids, deleted exactly where the portal deleted,
the same modification time and title-like field for live rows, no duplicate (portal, id).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import duckdb
import httpx

from emulator.testing import RunningEmulator

# Which warehouse table holds each emulator entity, and one content field to compare.
TABLES = {"deal": ("deals", "TITLE"), "contact": ("contacts", "NAME"), "company": ("companies", "TITLE"),
          "lead": ("leads", "TITLE"), "activity": ("activities", "SUBJECT")}


def entity_tables(emu: RunningEmulator) -> dict[str, tuple[str, str]]:
    """The standard kinds plus the default portal's smart-process types (read over its webhook)."""
    tables = dict(TABLES)
    types = httpx.post(f"{emu.webhook_url}crm.type.list", json={}, timeout=10).json()["result"]["types"]
    for row in types:
        tables[f"item:{row['entityTypeId']}"] = (f"items_{row['entityTypeId']}", "title")
    return tables


def compare(emu: RunningEmulator, rows_of: Callable[[str, str], list[tuple]], *, portal: str = "default",
            tables: dict[str, tuple[str, str]] | None = None) -> list[str]:
    """Problems found, empty when the warehouse equals the portal's ground truth.

    ``rows_of(table, content_field)`` returns ``[(id, deleted, modified_at, content), ...]``;
    ``tables`` defaults to `entity_tables` of the default portal.
    """
    problems: list[str] = []
    for entity, (table, content_field) in (tables or entity_tables(emu)).items():
        truth = {row["id"]: row for row in emu.truth(entity, portal)}
        stored = rows_of(table, content_field)
        ids = [row[0] for row in stored]
        if len(ids) != len(set(ids)):
            problems.append(f"{table}: duplicate ids")
        by_id = {row[0]: row for row in stored}
        missing = [i for i in truth if i not in by_id]
        extra = [i for i in by_id if i not in truth]
        wrong_delete = [i for i, row in truth.items() if i in by_id and bool(by_id[i][1]) != row["deleted"]]
        stale = [i for i, row in truth.items() if i in by_id and not row["deleted"]
                 and by_id[i][2] is not None
                 and by_id[i][2] != datetime.fromisoformat(row["modified"])]
        wrong_content = [i for i, row in truth.items() if i in by_id and not row["deleted"]
                         and str(by_id[i][3]) != str(row["fields"].get(content_field))]
        for label, found in (("missing", missing), ("extra", extra), ("wrong delete flag", wrong_delete),
                             ("stale", stale), ("wrong content", wrong_content)):
            if found:
                problems.append(f"{table}: {len(found)} {label}, e.g. {sorted(found)[:5]}")
    return problems


def duckdb_rows(path: str, portal: str = "default") -> Callable[[str, str], list[tuple]]:
    def rows_of(table: str, content_field: str) -> list[tuple]:
        with duckdb.connect(path, read_only=True) as con:
            present = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
            if table not in present:
                return []
            return con.execute(
                f'select id, _deleted_at is not null, _source_modified_at, "{content_field.lower()}" '
                f"from {table} where portal = ?", [portal]).fetchall()
    return rows_of
