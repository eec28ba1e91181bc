"""Reconciliation: a cheap id + modification-time scan of the portal against the warehouse.

The queue is the change feed, but a plan without ``rest_offline_extended`` loses rows to a crash,
and a bug anywhere would go unnoticed without an independent check (DESIGN §3). The scan selects
two fields per entity (2,500 rows per request) and classifies every id it judges:

* missing  live in the portal, absent from the warehouse;
* extra    live in the warehouse, gone from the portal (a delete we never saw);
* stale    in both, the warehouse's modification time is older than the portal's;
* ahead    in both, the warehouse's modification time is newer than the portal's (the warehouse
           was edited behind our back, or a time was stored wrong);
* revived  tombstoned in the warehouse but present in the portal: restored from the recycle bin
           with its id (facts §3: the restore is queued as an ADD), or a wrong tombstone.

Changes still on their way are not drift, so an id is *in flight*, reported apart and not judged,
when the connector's queue still holds a row for it (``event.offline.list``: reserved or not, error
lane included), or when a time on either side is later than the cut-off: the scan's start, or the
newest reservation in the journal if that is earlier (a change after it cannot have been synced
yet), minus `IN_FLIGHT_MARGIN` for clock skew between portal and warehouse host and one-second
timestamps. The queue is listed after the scan and the warehouse read last: a change made before
the scan either still has its queue row or was committed (rows are acknowledged after the commit).

With ``repair`` the missing, stale and revived objects are re-read and upserted through the same
commit step as the change sync (a revived object whose portal time is newer than its tombstone comes
back, see `connectors.warehouse.versioning`), the extra ones tombstoned, and the ahead ones re-read
and written with ``overwrite`` (the portal is the source of truth).

The smart-process types are asked afresh first (``crm.type.list``): a type deleted since the cache was
filled would otherwise fail the scan. A table of a type the portal no longer lists (``items_<id>``)
is judged against an empty portal: Bitrix24 deletes a type only once its items are deleted, so every
row it still holds live is extra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pandas as pd

from connectors.bitrix24 import EntityKind, fetch_by_ids, scan
from connectors.bitrix24.lookups import TYPES
from connectors.bitrix24.queue_rows import parse_timestamp
from connectors.sync.portal import PortalSync
from connectors.sync.staging import Fetched, Reserved, TablePart, read_json, schema_from_json
from connectors.sync.steps import CHUNK, commit, new_table_part, stage_frame, typed_frame, unlisted_type_kinds
from connectors.warehouse import TableNotFound

SAMPLE = 20  # ids listed per category in the report
IN_FLIGHT_MARGIN = timedelta(seconds=60)
DRIFT = ("missing", "extra", "stale", "ahead", "revived")


@dataclass
class TableReconciliation:
    """One table's comparison. Counts are ids; ``in_flight`` ids were left out of every drift count."""

    table: str
    portal_rows: int = 0
    warehouse_live_rows: int = 0
    missing: int = 0
    extra: int = 0
    stale: int = 0
    ahead: int = 0
    revived: int = 0
    in_flight: int = 0
    examples: dict[str, list[int]] = field(default_factory=dict)  # category -> up to SAMPLE ids

    @property
    def drift(self) -> int:
        """Ids out of sync for real (in-flight changes excluded)."""
        return sum(getattr(self, name) for name in DRIFT)

    @property
    def in_sync(self) -> bool:
        return self.drift == 0


@dataclass(frozen=True)
class _Verdict:
    report: TableReconciliation
    to_fetch: list[int]  # missing, stale, revived: re-read and upsert
    to_overwrite: list[int]  # ahead: re-read and overwrite
    to_tombstone: list[int]  # extra


def reconcile(sync: PortalSync, *, repair: bool = False,
              margin: timedelta = IN_FLIGHT_MARGIN) -> list[TableReconciliation]:
    """Compare every registered kind's ids and modification times between portal and warehouse.

    Returns one report per table. Reads: one scan per kind (``*.list`` selecting id and modification
    time), the connector's queue (``event.offline.list``), the warehouse's row versions and journal.
    With ``repair`` the drift found is fixed (see the module docstring); API errors propagate.
    """
    started = datetime.now(UTC)
    sync.forget([TYPES])
    portal_versions = {kind.key: _portal_versions(sync, kind) for kind in sync.registry}
    queued = sync.queue.queued_objects(sync.registry)
    cutoff = _cutoff(sync, started) - margin
    reports: list[TableReconciliation] = []
    fetched = Fetched(reserved=Reserved(portal=sync.portal, mode="reconcile"))
    overwrites: list[tuple[EntityKind, list[int]]] = []
    for kind in [*sync.registry, *unlisted_type_kinds(sync, {kind.table for kind in sync.registry})]:
        retired = kind.key not in portal_versions
        stored = _stored_versions(sync, kind)
        if retired and stored.empty:  # the table of another portal's type (tables are shared)
            continue
        verdict = _classify(kind.table, _NO_VERSIONS if retired else portal_versions[kind.key], stored,
                            queued.get(kind.key, frozenset()), cutoff)
        reports.append(verdict.report)
        if repair and retired and verdict.to_tombstone:
            now = datetime.now(UTC).isoformat()
            fetched.tables.append(TablePart.of_deleted_type(kind.key, kind.table, [
                (i, "absent_in_reconciliation", now) for i in verdict.to_tombstone]))
        elif repair and (verdict.to_fetch or verdict.to_tombstone):
            fetched.tables.append(_repair_part(sync, kind, verdict.to_fetch, verdict.to_tombstone))
        if repair and verdict.to_overwrite:
            overwrites.append((kind, verdict.to_overwrite))
    if fetched.tables:
        commit(sync, fetched.write(sync.staging_dir / "reconcile.json"))
    for kind, ids in overwrites:
        _overwrite(sync, kind, ids)
    return reports


_NO_VERSIONS = pd.Series([], index=pd.Index([], name="id", dtype="int64"), dtype="datetime64[ns, UTC]")


def _cutoff(sync: PortalSync, started: datetime) -> datetime:
    """The scan's start, or the newest reservation if earlier: later changes cannot be synced yet."""
    reserved = [entry.reserved_at for entry in sync.warehouse.journal(sync.portal)]
    return min(started, max(reserved)) if reserved else started


def _portal_versions(sync: PortalSync, kind: EntityKind) -> pd.Series:
    ids: list[int] = []
    modified: list[datetime] = []
    for chunk in scan(sync.client, kind, select=(kind.id_field, kind.modified_field)):
        for record in chunk:
            ids.append(int(record[kind.id_field]))
            value = record.get(kind.modified_field)
            modified.append(parse_timestamp(value).astimezone(UTC) if value else pd.NaT)
    return pd.Series(modified, index=pd.Index(ids, name="id", dtype="int64"), dtype="datetime64[ns, UTC]")


def _stored_versions(sync: PortalSync, kind: EntityKind) -> pd.DataFrame:
    try:
        stored = sync.warehouse.row_versions(sync.portal, kind.table).set_index("id")
    except TableNotFound:
        stored = pd.DataFrame({"_source_modified_at": pd.Series(dtype="datetime64[ns, UTC]"),
                               "_deleted_at": pd.Series(dtype="datetime64[ns, UTC]")},
                              index=pd.Index([], name="id", dtype="int64"))
    for column in ("_source_modified_at", "_deleted_at"):
        stored[column] = pd.to_datetime(stored[column], utc=True)
    return stored


def _classify(table: str, portal: pd.Series, stored: pd.DataFrame, queued: frozenset[int],
              cutoff: datetime) -> _Verdict:
    portal_rows, live_rows = len(portal), int(stored["_deleted_at"].isna().sum())
    every = portal.index.union(stored.index)
    recent = pd.Series(False, index=every)
    for times in (portal, stored["_source_modified_at"], stored["_deleted_at"]):
        late = times[times >= cutoff].index
        recent.loc[late] = True
    flying = every[recent.to_numpy() | every.isin(list(queued))]
    portal = portal.drop(flying.intersection(portal.index))
    stored = stored.drop(flying.intersection(stored.index))

    live = stored[stored["_deleted_at"].isna()]
    tombstoned = stored.index[stored["_deleted_at"].notna()]
    both = portal.index.intersection(live.index)
    stored_at = live.loc[both, "_source_modified_at"]
    portal_at = portal.loc[both]
    found = {
        "missing": portal.index.difference(stored.index),
        "extra": live.index.difference(portal.index),
        "stale": both[(stored_at < portal_at).to_numpy()],
        "ahead": both[(stored_at > portal_at).to_numpy()],
        "revived": portal.index.intersection(tombstoned),
        "in_flight": flying,
    }
    ids = {name: sorted(int(i) for i in index) for name, index in found.items()}
    report = TableReconciliation(
        table=table, portal_rows=portal_rows, warehouse_live_rows=live_rows,
        **{name: len(values) for name, values in ids.items()},
        examples={name: values[:SAMPLE] for name, values in ids.items() if values},
    )
    return _Verdict(report, sorted(ids["missing"] + ids["stale"] + ids["revived"]), ids["ahead"], ids["extra"])


def _repair_part(sync: PortalSync, kind: EntityKind, to_fetch: list[int], to_tombstone: list[int]):
    part = new_table_part(sync, kind)
    now = datetime.now(UTC).isoformat()
    for number, start in enumerate(range(0, len(to_fetch), CHUNK)):
        result = fetch_by_ids(sync.client, kind, to_fetch[start:start + CHUNK])
        frame, _ = typed_frame(sync, kind, part, result.records)
        stage_frame(sync, part, frame, number)
        part.tombstones.extend((i, "not_found", now) for i in result.not_found)
    part.tombstones.extend((i, "absent_in_reconciliation", now) for i in to_tombstone)
    return part


def _overwrite(sync: PortalSync, kind: EntityKind, ids: list[int]) -> None:
    """Rows the warehouse holds newer than the portal take the portal's state (one transaction)."""
    part = new_table_part(sync, kind)
    frames = []
    for start in range(0, len(ids), CHUNK):
        result = fetch_by_ids(sync.client, kind, ids[start:start + CHUNK])
        frame, _ = typed_frame(sync, kind, part, result.records)
        frames.append(frame)
    schema = schema_from_json(read_json(part.schema_file))
    with sync.warehouse.transaction() as tx:
        for frame in frames:
            if not frame.empty:
                tx.upsert(sync.portal, schema, frame, overwrite=True)
