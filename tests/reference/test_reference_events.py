"""Reference data refreshed by the events that change it, in the next CDC run rather than on the
schedule: an admin adds a user field, sets a list's items, renames a smart process, a user joins; the
next sync run shows the new labels in the dimensions, the `columns` dictionary and the analysts' views,
on DuckDB and PostgreSQL. A crash before the refresh is committed, or between that commit and the
acknowledgement, leaves the rows queued, and the next run converges. The event rows never reach the
error lane, and a portal bound before these events existed gets them bound by its next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from connectors.bitrix24 import Bitrix24Client, FileTokenStore, OAuthApp
from connectors.bitrix24.reference import REFERENCE_EVENTS
from connectors.sync import failpoints
from connectors.sync.portal import DEFAULT_CONNECTOR, PortalSync
from connectors.sync.reference import refresh_reference
from connectors.sync.staging import Committed
from connectors.sync.steps import commit, fetch, reserve, run_once
from connectors.warehouse.analytics import analytics_schema
from connectors.warehouse.duckdb_warehouse import DuckDBWarehouse
from connectors.warehouse.sql_warehouse import SqlWarehouse
from emulator.crm.origin import Origin
from emulator.portal import User
from emulator.testing import ThreadEmulator, run_emulator
from tests.reference.conftest import PORTAL


def sync_run(client: Bitrix24Client, warehouse: SqlWarehouse, tmp_path: Path, name: str,
             mode: str = "changes") -> Committed:
    return Committed.read(run_once(PortalSync(PORTAL, client, warehouse, tmp_path / "staging" / name), mode))


def queued(emu: ThreadEmulator) -> list[str]:
    """Event names of the rows waiting in our connector's queue (reserved or not)."""
    return sorted(row["EVENT_NAME"] for row in emu.queue() if row["CONNECTOR_ID"] == DEFAULT_CONNECTOR)


def one(warehouse: SqlWarehouse, sql: str, **params: object) -> object:
    [(value,)] = warehouse.query(sql, params)
    return value


def label_of(warehouse: SqlWarehouse, table: str, column: str) -> object:
    return one(warehouse, f"SELECT label FROM {warehouse.relation('columns')} WHERE portal = %(portal)s "
                          "AND table_name = %(table)s AND column_name = %(column)s",
               portal=PORTAL, table=table, column=column)


def bootstrap(client: Bitrix24Client, warehouse: SqlWarehouse, tmp_path: Path) -> None:
    """A portal as the sensor leaves it: full resync (binds the events), then the first scheduled refresh."""
    sync_run(client, warehouse, tmp_path, "full", "full_resync")
    refresh_reference(client, warehouse, PORTAL)


def test_the_next_sync_run_shows_a_new_field_list_item_type_title_and_user(
        emu: ThreadEmulator, client: Bitrix24Client, warehouse: SqlWarehouse, tmp_path: Path) -> None:
    bootstrap(client, warehouse, tmp_path)
    portal = emu.world.portal("default")
    crm = portal.crm
    views = analytics_schema(warehouse)
    assert one(warehouse, f'SELECT DISTINCT smart_process FROM "{views}".items_128') == "Smart process 1"

    region = crm.add_user_field("deal", "REGION", "enumeration", label="Region", items=("North", "South"))
    crm.write("deal", "update", 2, {"UF_CRM_REGION": str(region.items[0][0])}, Origin(user_id=2))
    crm.set_enum_values("deal", "UF_CRM_1700000000006", ("SMB", "Mid-market", "Enterprise", "Government"))
    crm.rename_smart_process(128, "Installations")
    portal.add_user(User(300, "Nina Petrova", departments=(3,)))
    assert {"ONCRMDEALUSERFIELDADD", "ONCRMDEALUSERFIELDSETENUMVALUES", "ONCRMTYPEUPDATE",
            "ONUSERADD"} <= set(queued(emu)), "the full resync bound the reference-data events"

    committed = sync_run(client, warehouse, tmp_path, "changes")

    assert queued(emu) == []
    assert committed.reference_rows["users"] == len(portal.users)
    assert label_of(warehouse, "deals", "uf_crm_region") == "Region"
    government = next(item_id for item_id, value in crm.table("deal").user_fields["UF_CRM_1700000000006"].items
                      if value == "Government")
    assert one(warehouse, f"SELECT value FROM {warehouse.relation('user_field_enums')} WHERE portal = %(portal)s "
                          "AND field_name = 'UF_CRM_1700000000006' AND item_id = %(item)s",
               portal=PORTAL, item=str(government)) == "Government"
    assert one(warehouse, f"SELECT title FROM {warehouse.relation('crm_types')} WHERE entity_type_id = 128") == (
        "Installations")
    assert one(warehouse, f"SELECT full_name FROM {warehouse.relation('users')} WHERE user_id = 300") == "Nina Petrova"
    # The analysts' views were rebuilt in the same run: new title, new user, the new list column.
    assert one(warehouse, f'SELECT DISTINCT smart_process FROM "{views}".items_128') == "Installations"
    assert one(warehouse, f'SELECT full_name FROM "{views}".users WHERE user_id = 300') == "Nina Petrova"
    assert one(warehouse, f'SELECT uf_crm_region_label FROM "{views}".deals WHERE id = 2') == "North"
    # Rows without a CRM object are neither refused nor parked: nothing in the error lane, no error counted.
    assert warehouse.error_lane(PORTAL) == []
    assert warehouse.runs(PORTAL, limit=1)[0].errors == 0


def test_a_crash_before_or_after_the_refresh_commit_leaves_the_rows_queued_and_the_next_run_converges(
        emu: ThreadEmulator, client: Bitrix24Client, warehouse: SqlWarehouse, tmp_path: Path) -> None:
    bootstrap(client, warehouse, tmp_path)
    crm = emu.world.portal("default").crm
    crm.relabel_user_field("deal", "UF_CRM_1700000000006", "Customer segment")
    assert label_of(warehouse, "deals", "uf_crm_1700000000006") == "Segment"

    # Dies after fetching (the dimensions are read and staged), before commit: nothing is stored.
    dead = PortalSync(PORTAL, client, warehouse, tmp_path / "staging" / "dead-before")
    fetch(dead, reserve(dead))
    assert queued(emu) == ["ONCRMDEALUSERFIELDUPDATE"]
    assert label_of(warehouse, "deals", "uf_crm_1700000000006") == "Segment"

    # The next run takes the reservation over and dies after its commit, before the acknowledgement:
    # the refresh is stored with the journal's mark, and the row is still queued.
    dead = PortalSync(PORTAL, client, warehouse, tmp_path / "staging" / "dead-after")
    commit(dead, fetch(dead, reserve(dead)))
    assert label_of(warehouse, "deals", "uf_crm_1700000000006") == "Customer segment"
    assert queued(emu) == ["ONCRMDEALUSERFIELDUPDATE"]

    sync_run(client, warehouse, tmp_path, "recovers")

    assert queued(emu) == []
    assert label_of(warehouse, "deals", "uf_crm_1700000000006") == "Customer segment"
    assert warehouse.error_lane(PORTAL) == []


def test_a_portal_bound_before_the_reference_events_gets_them_bound_by_its_next_run(
        emu: ThreadEmulator, client: Bitrix24Client, warehouse: SqlWarehouse, tmp_path: Path) -> None:
    sync_run(client, warehouse, tmp_path, "full", "full_resync")
    # As an older release left it: only the CRM events bound, the look-up cache without the bindings.
    for name in REFERENCE_EVENTS:
        client.call("event.unbind", {"event": name, "event_type": "offline", "auth_connector": DEFAULT_CONNECTOR})
    PortalSync(PORTAL, client, warehouse, tmp_path / "staging" / "forget").cache.forget(["reference_bindings"])
    emu.world.portal("default").crm.rename_smart_process(128, "Unseen")
    assert queued(emu) == []

    sync_run(client, warehouse, tmp_path, "binds")
    emu.world.portal("default").crm.rename_smart_process(128, "Installations")
    sync_run(client, warehouse, tmp_path, "refreshes")

    bound = {row["event"] for row in client.call("event.get").result
             if row.get("offline") and row.get("connector_id") == DEFAULT_CONNECTOR}
    assert set(REFERENCE_EVENTS) <= bound
    assert one(warehouse, f"SELECT title FROM {warehouse.relation('crm_types')} WHERE entity_type_id = 128") == (
        "Installations")


def test_a_process_killed_between_the_refresh_commit_and_the_ack_leaves_the_row_for_the_next_run(
        emu: ThreadEmulator, client: Bitrix24Client, tmp_path: Path) -> None:
    # The same crash as above, by SIGKILL (failpoint after_commit) of `python -m connectors.sync`.
    path = tmp_path / "warehouse.duckdb"
    with DuckDBWarehouse(path) as warehouse:
        bootstrap(client, warehouse, tmp_path)
    emu.world.portal("default").crm.rename_smart_process(128, "Installations")

    assert sync_process(emu, tmp_path, path, failpoint="after_commit") == -signal.SIGKILL
    assert queued(emu) == ["ONCRMTYPEUPDATE"]
    with DuckDBWarehouse(path) as warehouse:
        assert one(warehouse, f"SELECT title FROM {warehouse.relation('crm_types')}") == "Installations"

    assert sync_process(emu, tmp_path, path) == 0
    assert queued(emu) == []
    with DuckDBWarehouse(path) as warehouse:
        assert one(warehouse, f'SELECT DISTINCT smart_process FROM "{analytics_schema(warehouse)}".items_128') == (
            "Installations")


def sync_process(emu: ThreadEmulator, tmp_path: Path, warehouse: Path, failpoint: str | None = None) -> int:
    """One run of the CDC loop in its own process (the app's keys from the environment)."""
    env = {**os.environ, "B24_CLIENT_ID": emu.client_id, "B24_CLIENT_SECRET": emu.client_secret,
           "B24_OAUTH_TOKEN_URL": emu.token_url, "B24_STAGING_DIR": str(tmp_path / "staging")}
    env.pop(failpoints.ENV, None)
    if failpoint:
        env[failpoints.ENV] = failpoint
    done = subprocess.run([sys.executable, "-m", "connectors.sync", "--portal", PORTAL, "--warehouse", str(warehouse),
                           "--tokens-dir", str(tmp_path / "tokens")], env=env, capture_output=True, text=True,
                          timeout=120)
    if failpoint is None and done.returncode:
        raise AssertionError(done.stderr[-3000:])
    return done.returncode


def test_an_app_without_a_reference_scope_still_loads_the_crm_changes_queued_with_the_event(
        tmp_path: Path) -> None:
    """docs/reference-data.md: a portal that refuses the reference read (here: the app lacks the
    ``department`` scope) has its reference rows acknowledged without a refresh; the CRM change queued
    beside them must load, not fail every run."""
    with run_emulator(limits=False) as emu:
        emu.register_app("noscope", "secret-noscope-app", scopes=["crm", "user"])
        emu.install("noscope")
        tokens = FileTokenStore(tmp_path / "tokens")
        tokens.save(PORTAL, emu.install_tokens(client_id="noscope", client_secret="secret-noscope-app"))
        app = OAuthApp("noscope", "secret-noscope-app", token_url=emu.token_url)
        with Bitrix24Client(app.session(PORTAL, tokens)) as client, DuckDBWarehouse(tmp_path / "wh.duckdb") as wh:
            run_once(PortalSync(PORTAL, client, wh, tmp_path / "s0"), "full_resync")
            crm = emu.world.portal(PORTAL).crm
            crm.add_user_field("deal", "REGION", "string", label="Region")
            crm.write("deal", "update", 2, {"TITLE": "changed by a user"}, Origin(user_id=2))
            assert {row["EVENT_NAME"] for row in emu.queue() if row["CONNECTOR_ID"] == DEFAULT_CONNECTOR} == {
                "ONCRMDEALUPDATE", "ONCRMDEALUSERFIELDADD"}

            run_once(PortalSync(PORTAL, client, wh, tmp_path / "s1"), "changes")

            assert wh.query(f"SELECT title FROM {wh.relation('deals')} WHERE portal = %(p)s AND id = 2",
                            {"p": PORTAL}) == [("changed by a user",)]
            assert [row for row in emu.queue() if row["CONNECTOR_ID"] == DEFAULT_CONNECTOR] == []

