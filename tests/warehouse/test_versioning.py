"""The upsert rules on both engines: re-applying is a no-op, an older state never overwrites a newer
one, a tombstone holds against anything older than the deletion but gives way to a version newer than
it (an object restored from the recycle bin), and history keeps one row per applied version.

These are the properties the CDC loop's at-least-once delivery relies on (DESIGN §3): a batch may be
committed twice after a crash, and fetches of the same entity may land out of order.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from connectors.sync.staging import write_frame
from connectors.warehouse import UpsertCounts, Warehouse
from tests.warehouse.entities import PORTAL, T0, deal_frame, deals_schema, later

SCHEMA = deals_schema()


def table_rows(warehouse: Warehouse, name: str, order: str = "id") -> list[tuple]:
    return warehouse.query(f"SELECT * FROM {warehouse.relation(name)} ORDER BY {order}")


def history(warehouse: Warehouse) -> list[tuple]:
    return warehouse.query(
        f"SELECT id, stage_id, _valid_from, _valid_to FROM {warehouse.relation('deals_history')} "
        "ORDER BY id, _valid_from, _valid_to NULLS LAST")


def test_applying_the_same_batch_twice_leaves_identical_tables_and_history(warehouse: Warehouse) -> None:
    batch = deal_frame([1, 2, 3], stage="NEW")
    with warehouse.transaction() as tx:
        first = tx.upsert(PORTAL, SCHEMA, batch)
    deals, versions = table_rows(warehouse, "deals"), table_rows(warehouse, "deals_history")

    with warehouse.transaction() as tx:
        second = tx.upsert(PORTAL, SCHEMA, batch)

    assert first == UpsertCounts(received=3, inserted=3)
    assert second == UpsertCounts(received=3, unchanged=3)
    assert table_rows(warehouse, "deals") == deals
    assert table_rows(warehouse, "deals_history") == versions
    assert len(versions) == 3


def test_an_older_version_arriving_after_a_newer_one_is_ignored(warehouse: Warehouse) -> None:
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, SCHEMA, deal_frame([1], stage="WON", modified=later(10)))
    with warehouse.transaction() as tx:
        counts = tx.upsert(PORTAL, SCHEMA, deal_frame([1], stage="NEW", modified=later(5)))

    assert counts == UpsertCounts(received=1, stale=1)
    assert warehouse.query(f"SELECT stage_id, _source_modified_at FROM {warehouse.relation('deals')}") == [
        ("WON", later(10))]
    assert [row[:2] for row in history(warehouse)] == [(1, "WON")]


def test_a_newer_version_replaces_the_row_and_closes_the_previous_history_row(warehouse: Warehouse) -> None:
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, SCHEMA, deal_frame([1, 2], stage="NEW", modified=T0))
    with warehouse.transaction() as tx:
        counts = tx.upsert(PORTAL, SCHEMA, deal_frame([1], stage="WON", modified=later(30)))

    assert counts == UpsertCounts(received=1, updated=1)
    assert history(warehouse) == [
        (1, "NEW", T0, later(30)),
        (1, "WON", later(30), None),
        (2, "NEW", T0, None),
    ]


def test_equal_modification_time_with_new_content_is_applied(warehouse: Warehouse) -> None:
    # Bitrix24 times have one-second resolution: two edits in the same second share a time.
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, SCHEMA, deal_frame([1], stage="NEW", modified=T0))
        counts = tx.upsert(PORTAL, SCHEMA, deal_frame([1], stage="PREPARATION", modified=T0))

    assert counts == UpsertCounts(received=1, updated=1)
    assert warehouse.query(f"SELECT stage_id FROM {warehouse.relation('deals')}") == [("PREPARATION",)]


def test_an_update_older_than_the_delete_keeps_the_tombstone(warehouse: Warehouse) -> None:
    deleted_at = datetime(2024, 5, 2, tzinfo=UTC)
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, SCHEMA, deal_frame([1, 2], modified=T0))
    with warehouse.transaction() as tx:
        assert tx.tombstone(PORTAL, SCHEMA, [1], "deleted in Bitrix24", deleted_at) == 1
    with warehouse.transaction() as tx:
        counts = tx.upsert(PORTAL, SCHEMA, deal_frame([1], stage="WON", modified=later(60 * 12)))
        counts += tx.upsert(PORTAL, SCHEMA, deal_frame([1], stage="LOSE", modified=deleted_at))

    assert counts == UpsertCounts(received=2, tombstoned=2)
    assert warehouse.query(
        f"SELECT id, stage_id, _deleted_at, _deleted_reason FROM {warehouse.relation('deals')} ORDER BY id") == [
        (1, "NEW", deleted_at, "deleted in Bitrix24"), (2, "NEW", None, None)]
    assert history(warehouse) == [(1, "NEW", T0, deleted_at), (2, "NEW", T0, None)]
    assert warehouse.query(f"SELECT id FROM {warehouse.relation('deals_current')}") == [(2,)]


def test_a_restored_object_newer_than_its_tombstone_comes_back(warehouse: Warehouse) -> None:
    deleted_at = datetime(2024, 5, 2, tzinfo=UTC)
    restored_at = datetime(2024, 5, 3, tzinfo=UTC)
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, SCHEMA, deal_frame([1, 2], modified=T0))
        tx.tombstone(PORTAL, SCHEMA, [1], "deleted in Bitrix24", deleted_at)
    with warehouse.transaction() as tx:
        counts = tx.upsert(PORTAL, SCHEMA, deal_frame([1], stage="WON", modified=restored_at))
    with warehouse.transaction() as tx:
        again = tx.upsert(PORTAL, SCHEMA, deal_frame([1], stage="WON", modified=restored_at))

    assert counts == UpsertCounts(received=1, revived=1) and counts.written == 1
    assert again == UpsertCounts(received=1, unchanged=1)
    assert warehouse.query(
        f"SELECT id, stage_id, _source_modified_at, _deleted_at, _deleted_reason "
        f"FROM {warehouse.relation('deals')} ORDER BY id") == [
        (1, "WON", restored_at, None, None), (2, "NEW", T0, None, None)]
    assert history(warehouse) == [(1, "NEW", T0, deleted_at), (1, "WON", restored_at, None), (2, "NEW", T0, None)]
    assert warehouse.query(f"SELECT id FROM {warehouse.relation('deals_current')} ORDER BY id") == [(1,), (2,)]


def test_a_version_newer_than_a_tombstone_for_an_unseen_id_fills_the_row(warehouse: Warehouse) -> None:
    deleted_at = datetime(2024, 5, 2, tzinfo=UTC)
    with warehouse.transaction() as tx:
        tx.tombstone(PORTAL, SCHEMA, [5], "not found on fetch", deleted_at)
        counts = tx.upsert(PORTAL, SCHEMA, deal_frame([5], modified=datetime(2024, 5, 4, tzinfo=UTC)))

    assert counts == UpsertCounts(received=1, revived=1)
    assert warehouse.query(f"SELECT id, title FROM {warehouse.relation('deals_current')}") == [(5, "Deal 5")]


def test_a_tombstone_for_an_unseen_id_stops_its_late_arrival(warehouse: Warehouse) -> None:
    # The delete event can be processed before a replayed fetch of the same entity is.
    with warehouse.transaction() as tx:
        assert tx.tombstone(PORTAL, SCHEMA, [5, 5], "not found on fetch") == 1
        counts = tx.upsert(PORTAL, SCHEMA, deal_frame([5]))

    assert counts == UpsertCounts(received=1, tombstoned=1)
    assert warehouse.query(f"SELECT count(*) FROM {warehouse.relation('deals_current')}") == [(0,)]


def test_tombstoning_twice_keeps_the_first_deletion(warehouse: Warehouse) -> None:
    first, second = datetime(2024, 5, 2, tzinfo=UTC), datetime(2024, 5, 3, tzinfo=UTC)
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, SCHEMA, deal_frame([1]))
        tx.tombstone(PORTAL, "deals", [1], "deleted in Bitrix24", first)
    with warehouse.transaction() as tx:
        assert tx.tombstone(PORTAL, "deals", [1], "reconciliation", second) == 0

    assert warehouse.query(f"SELECT _deleted_at, _deleted_reason FROM {warehouse.relation('deals')}") == [
        (first, "deleted in Bitrix24")]


def test_duplicate_ids_in_one_frame_keep_the_latest_state(warehouse: Warehouse) -> None:
    import pandas as pd

    frame = pd.concat([deal_frame([1], stage="WON", modified=later(5)),
                       deal_frame([1], stage="NEW", modified=T0),
                       deal_frame([2])], ignore_index=True)
    with warehouse.transaction() as tx:
        counts = tx.upsert(PORTAL, SCHEMA, frame)

    assert counts == UpsertCounts(received=3, inserted=2, duplicates=1)
    assert warehouse.query(f"SELECT id, stage_id FROM {warehouse.relation('deals')} ORDER BY id") == [
        (1, "WON"), (2, "NEW")]


def test_frames_arrow_tables_parquet_and_arrow_ipc_files_load_alike(warehouse: Warehouse, tmp_path) -> None:
    parquet_file, ipc_file = tmp_path / "chunk.parquet", tmp_path / "chunk.arrow"
    pq.write_table(pa.Table.from_pandas(deal_frame([3]), preserve_index=False), parquet_file)
    write_frame(ipc_file, deal_frame([4]))  # the sync's own staged chunk
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, SCHEMA, deal_frame([1]))
        tx.upsert(PORTAL, SCHEMA, pa.Table.from_pandas(deal_frame([2]), preserve_index=False))
        tx.upsert(PORTAL, SCHEMA, parquet_file)
        tx.upsert(PORTAL, SCHEMA, ipc_file)

    rows = warehouse.query(f"SELECT id, title, opportunity, closedate, contact_ids FROM "
                           f"{warehouse.relation('deals_current')} ORDER BY id")
    assert [(row[0], row[1], str(row[2]), str(row[3])) for row in rows] == [
        (1, "Deal 1", "10.50", "2024-06-30"), (2, "Deal 2", "20.50", "2024-06-30"),
        (3, "Deal 3", "30.50", "2024-06-30"), (4, "Deal 4", "40.50", "2024-06-30")]


def test_portals_share_a_table_without_touching_each_other(warehouse: Warehouse) -> None:
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, SCHEMA, deal_frame([1], stage="NEW"))
        tx.upsert("other.bitrix24.test", SCHEMA, deal_frame([1], stage="WON"))
        tx.tombstone("other.bitrix24.test", "deals", [1], "deleted in Bitrix24")

    assert warehouse.query(f"SELECT portal, stage_id FROM {warehouse.relation('deals_current')}") == [
        (PORTAL, "NEW")]


def test_row_versions_lists_live_and_deleted_rows_for_reconciliation(warehouse: Warehouse) -> None:
    deleted_at = datetime(2024, 5, 2, tzinfo=UTC)
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, SCHEMA, deal_frame([1, 2], modified=T0))
        tx.tombstone(PORTAL, "deals", [2], "deleted in Bitrix24", deleted_at)

    versions = warehouse.row_versions(PORTAL, "deals")

    assert list(versions.columns) == ["id", "_source_modified_at", "_deleted_at"]
    assert versions["id"].tolist() == [1, 2]
    assert versions["_source_modified_at"].tolist() == [T0, T0]
    assert versions["_deleted_at"].isna().tolist() == [True, False]


def test_an_overwrite_replaces_a_row_held_newer_than_the_portal_and_history_records_the_correction(
        warehouse: Warehouse) -> None:
    deleted_at = datetime(2024, 5, 2, tzinfo=UTC)
    with warehouse.transaction() as tx:
        tx.upsert(PORTAL, SCHEMA, deal_frame([1, 2], stage="WON", modified=later(60)))
        tx.upsert(PORTAL, SCHEMA, deal_frame([3], modified=T0))
        tx.tombstone(PORTAL, SCHEMA, [3], "deleted in Bitrix24", deleted_at)
    with warehouse.transaction() as tx:
        counts = tx.upsert(PORTAL, SCHEMA, deal_frame([1, 3], stage="NEW", modified=later(5)), overwrite=True)
        again = tx.upsert(PORTAL, SCHEMA, deal_frame([1], stage="NEW", modified=later(5)), overwrite=True)
        [(corrected_at,)] = warehouse.query("SELECT now()")

    assert counts == UpsertCounts(received=2, updated=1, tombstoned=1)
    assert again == UpsertCounts(received=1, unchanged=1)
    assert warehouse.query(
        f"SELECT id, stage_id, _source_modified_at FROM {warehouse.relation('deals_current')} ORDER BY id") == [
        (1, "NEW", later(5)), (2, "WON", later(60))]
    assert [row for row in history(warehouse) if row[0] == 1] == [
        (1, "WON", later(60), corrected_at), (1, "NEW", corrected_at, None)]
