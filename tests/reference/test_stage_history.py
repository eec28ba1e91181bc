"""Stage history is loaded incrementally by id and survives a crash at the worst moment.

The warehouse must hold exactly the emulator's ``crm.stagehistory.list`` rows (leads, deals, smart
processes) after each sync: new moves arrive in one request, a backlog larger than one batch is
committed in chunks, and a process killed after reading rows but before committing them (failpoint
``stage_history_fetched``, SIGKILL in a child process) loses nothing and duplicates nothing when the
sync runs again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from connectors.bitrix24 import Bitrix24Client
from connectors.sync.reference import sync_stage_history
from connectors.warehouse.reference import stage_history_marks
from connectors.warehouse.sql_warehouse import SqlWarehouse
from emulator.crm.origin import Origin
from emulator.testing import ThreadEmulator
from tests.reference.conftest import PORTAL
from tests.warehouse.conftest import WarehouseTarget

SMART_PROCESSES = (128,)


def emulator_history(emu: ThreadEmulator) -> set[tuple[int, int, int, str]]:
    """(entity type, id, owner, stage) of every history row the emulator holds: the ground truth."""
    crm = emu.world.portal("default").crm
    with crm.portal.lock:
        return {(type_id, row["ID"], row["OWNER_ID"], row["STAGE_ID"])
                for type_id, history in crm.reference.histories.items() for row in history.rows}


def stored_history(warehouse: SqlWarehouse) -> list[tuple[int, int, int, str]]:
    return [tuple(row) for row in warehouse.query(
        f"SELECT entity_type_id, id, owner_id, stage_id FROM {warehouse.relation('stage_history')} "
        "WHERE portal = %(portal)s ORDER BY 1, 2", {"portal": PORTAL})]


def move_stages(emu: ThreadEmulator, deal_ids: list[int]) -> None:
    crm = emu.world.portal("default").crm
    for deal_id in deal_ids:
        row = crm.table("deal").rows[deal_id]
        pipeline = crm.reference.pipeline(int(row["CATEGORY_ID"]))
        stages = pipeline.stage_ids()
        target = stages[(stages.index(row["STAGE_ID"]) + 1) % len(stages)]
        crm.write("deal", "update", deal_id, {"STAGE_ID": target}, Origin(user_id=2))


def test_new_moves_arrive_in_one_request_and_match_the_portal(emu: ThreadEmulator, client: Bitrix24Client,
                                                              warehouse: SqlWarehouse) -> None:
    first = sync_stage_history(client, warehouse, PORTAL, SMART_PROCESSES)
    assert first.rows == len(emulator_history(emu)) > 0
    assert set(stored_history(warehouse)) == emulator_history(emu)

    move_stages(emu, [1, 2, 3])
    emu.world.portal("default").crm.write("lead", "add", None, {"TITLE": "walk-in"}, Origin(user_id=3))
    emu.reset_stats()
    second = sync_stage_history(client, warehouse, PORTAL, SMART_PROCESSES)

    assert second.rows == 4 and second.requests == 1 and emu.stats()["http_requests"] == 1
    stored = stored_history(warehouse)
    assert len(stored) == len(set(stored)) and set(stored) == emulator_history(emu)
    assert sync_stage_history(client, warehouse, PORTAL, SMART_PROCESSES).rows == 0


def test_a_backlog_larger_than_a_batch_is_committed_in_chunks(emu: ThreadEmulator, client: Bitrix24Client,
                                                              warehouse: SqlWarehouse) -> None:
    deal_ids = list(emu.world.portal("default").crm.table("deal").ids)
    for _ in range(160):
        move_stages(emu, deal_ids)  # 20 deals x 160 moves: 3,200 rows of one type
    synced = sync_stage_history(client, warehouse, PORTAL, SMART_PROCESSES)

    stored = stored_history(warehouse)
    assert synced.requests >= 2 and len(stored) == len(set(stored)) and set(stored) == emulator_history(emu)
    assert stage_history_marks(warehouse, PORTAL) == {
        type_id: max(row[1] for row in stored if row[0] == type_id) for type_id in (1, 2, 128)}


CRASHING_SYNC = textwrap.dedent("""
    import sys
    from connectors.bitrix24 import Bitrix24Client, WebhookCredentials
    from connectors.sync.reference import sync_stage_history
    from connectors.warehouse import open_warehouse
    url, target, schema = sys.argv[1:4]
    warehouse = open_warehouse(target, **({"schema": schema} if schema else {}))
    with Bitrix24Client(WebhookCredentials(url)) as client:
        sync_stage_history(client, warehouse, "default", (128,))
    print("the failpoint did not fire")
""")


def test_a_crash_between_reading_and_committing_loses_nothing_and_duplicates_nothing(
        emu: ThreadEmulator, client: Bitrix24Client, warehouse_target: WarehouseTarget) -> None:
    warehouse = warehouse_target.open()
    assert isinstance(warehouse, SqlWarehouse)
    sync_stage_history(client, warehouse, PORTAL, SMART_PROCESSES)
    before = stored_history(warehouse)
    if warehouse_target.engine == "duckdb":
        warehouse.close()  # the child needs the file's single writer slot
    move_stages(emu, [4, 5, 6, 7])

    env = {**os.environ, "B24WH_FAILPOINT": "stage_history_fetched"}
    child = subprocess.run([sys.executable, "-c", CRASHING_SYNC, emu.webhook_url, warehouse_target.target,
                            warehouse_target.options.get("schema", "")], env=env, capture_output=True,
                           text=True, timeout=120, cwd=os.getcwd())
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr

    warehouse = warehouse_target.open()
    assert isinstance(warehouse, SqlWarehouse)
    assert stored_history(warehouse) == before  # the killed read committed nothing
    again = sync_stage_history(client, warehouse, PORTAL, SMART_PROCESSES)
    stored = stored_history(warehouse)
    assert again.rows == 4 and len(stored) == len(set(stored)) and set(stored) == emulator_history(emu)
