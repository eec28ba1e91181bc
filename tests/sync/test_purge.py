"""Purging one portal's data on purpose: only that portal's rows go, from every table, in one step;
without --yes nothing is deleted."""

from __future__ import annotations

from connectors.sync.purge import main
from tests.warehouse.conftest import WarehouseTarget
from tests.warehouse.entities import deal_frame, deals_schema


def test_a_purge_deletes_every_row_of_one_portal_and_nothing_else(warehouse_target: WarehouseTarget,
                                                                 capsys) -> None:
    warehouse = warehouse_target.open()
    for portal in ("gone.bitrix24.com", "kept.bitrix24.com"):
        with warehouse.transaction() as tx:
            tx.upsert(portal, deals_schema(), deal_frame([1, 2]))
        warehouse.record_reserved(portal, {f"{portal}-process": 2})
    warehouse.close()
    url = warehouse_target.target if warehouse_target.engine == "duckdb" else \
        f"{warehouse_target.target}?schema={warehouse_target.options['schema']}"

    assert main(["--portal", "gone.bitrix24.com", "--warehouse", url]) == 0  # counts only
    counted = capsys.readouterr().out
    assert "would delete" in counted
    assert main(["--portal", "gone.bitrix24.com", "--warehouse", url, "--yes"]) == 0
    printed = capsys.readouterr().out
    assert "deals\t2" in printed and "deals_history\t2" in printed and "_cdc_journal\t1" in printed
    # The count is what the purge deleted: every table, histories included, the same total.
    assert counted.splitlines()[:-1] == printed.splitlines()[:-1]
    assert counted.split(": ")[-1] == printed.split(": ")[-1]

    with warehouse_target.open() as after:
        for table in ("deals", "deals_history", "_cdc_journal"):
            rows = dict(after.query(f"SELECT portal, count(*) FROM {after.relation(table)} GROUP BY portal"))
            assert "gone.bitrix24.com" not in rows and rows["kept.bitrix24.com"] >= 1, table
    assert main(["--portal", "gone.bitrix24.com", "--warehouse", url, "--yes"]) == 2  # nothing left
