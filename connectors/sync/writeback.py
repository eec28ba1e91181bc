"""Write-back (reverse ETL): a warehouse query's rows pushed into Bitrix24 as field updates, safely.

A write-back is declared as a query over the warehouse (`WriteBackSpec`) that returns one row per
target object: ``entity_kind`` (``lead``, ``deal``, ``contact``, ``company``, ``activity``,
``item:<entityTypeId>``, or the table name), ``id``, and one column per field to set, named as
Bitrix24 spells the field (``UF_CRM_SCORE``, ``TITLE``) or as its warehouse column (``uf_crm_score``).
A NULL clears the field. `write_back` then, for one portal:

1. **refuses** unless every call can carry the connector key the offline events are bound with, so
   our own writes never come back through the queue (facts §2.12; `LoopAvoidanceUnavailable`);
2. **recovers**: journal rows a crashed run left ``intent``/``sent`` are re-read from the portal and
   stored; a push that landed is ``done`` and never sent again;
3. **diffs** every row against the state the warehouse last saw from the portal (the stored ``_raw``),
   field by field in the field's type ("37.50" equals 37.5); only differing fields are sent;
4. **pushes** (unless a dry run) at most ``max_changes`` objects, 50 ``*.update`` per ``batch`` request
   under the client's rate-limit throttle: ``intent`` journalled before each request, ``sent`` or
   ``failed`` (with the Bitrix24 error) after it; one refused row never stops the others;
5. **refreshes** the pushed objects (``@ID`` lists, 2,500 per request) and stores them with their
   ``done`` mark in one transaction: our own writes do not come through the queue, so this is how
   the warehouse learns them. A field the portal holds differently after the write (read-only, or
   normalised) is ``failed`` rather than pushed again forever.

Dagster-free; `pipelines.writeback` wraps it as an asset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from connectors.bitrix24 import (
    EntityKind,
    EntityRegistry,
    LoopAvoidanceUnavailable,
    MalformedRecord,
    OfflineQueue,
    WriteBack,
    WrongLicense,
    fetch_by_ids,
    frame_and_coercions,
    table_schema,
)
from connectors.bitrix24.batch import MAX_COMMANDS, in_groups
from connectors.bitrix24.field_values import plain, same_value, wire_value
from connectors.bitrix24.redaction import redact
from connectors.sync.failpoints import failpoint
from connectors.tables import ColumnSpec, ColumnType, TableSchema, check_identifier
from connectors.warehouse import PushEntry, PushStatus, Warehouse, WarehouseBusy
from connectors.warehouse.writeback_ledger import UNFINISHED

log = logging.getLogger(__name__)

DEFAULT_MAX_CHANGES = 500  # objects pushed per run; the rest waits for the next run
REFRESH_SLICE = 2_500  # objects pushed, then re-read and committed (one fetch request's worth)
SAMPLE = 10  # changes and errors shown in the report
KEY_COLUMNS = ("entity_kind", "id")
IGNORED_COLUMNS = ("portal",)  # a view over the entity tables usually keeps it; it selects, not sets
_RELATION = re.compile(r"\{([a-z_][a-z0-9_]{0,62})\}")


class WriteBackError(Exception):
    """The declaration does not fit the warehouse or the portal (a column that is no field, no id)."""


class WriteBackBusy(WriteBackError):
    """Another run of the same write-back is pushing to the same portal now."""


@dataclass(frozen=True)
class WriteBackSpec:
    """A declared write-back. ``query`` may use ``%(portal)s`` (the portal being pushed); write a
    literal percent sign as ``%%``. `from_view` declares one over a view that has a ``portal`` column."""

    name: str  # journal key and asset name: a plain identifier
    query: str
    entity_kind: str | None = None  # used when the query has no entity_kind column

    def __post_init__(self) -> None:
        check_identifier(self.name)
        # Bitrix24 ids start at 1 on every portal: a query that does not select the portal being
        # pushed would write one portal's results into another's objects with the same ids.
        if "%(portal)s" not in self.query:
            raise WriteBackError(f"write-back {self.name}: the query must select the portal being pushed "
                                 "(WHERE portal = %(portal)s)")

    @classmethod
    def from_view(cls, name: str, view: str, entity_kind: str | None = None) -> WriteBackSpec:
        check_identifier(view)
        return cls(name, f"SELECT * FROM {{{view}}} WHERE portal = %(portal)s", entity_kind)

    def sql(self, warehouse: Warehouse) -> str:
        """The query with each ``{relation}`` qualified for the warehouse (``"bitrix24"."leads"`` on
        PostgreSQL), so one declaration runs on either engine."""
        return _RELATION.sub(lambda match: warehouse.relation(match.group(1)), self.query)


@dataclass(frozen=True)
class RowError:
    entity_kind: str
    entity_id: int | None
    error: str  # the Bitrix24 error (code: description), or why the row was not pushed; redacted

    def as_dict(self) -> dict[str, Any]:
        """``{"key": "lead 7", "error": ...}``; a row without a usable id is keyed by its kind alone."""
        key = self.entity_kind if self.entity_id is None else f"{self.entity_kind} {self.entity_id}"
        return {"key": key, "error": self.error}


@dataclass
class WriteBackReport:
    """What one run compared, changed and pushed; counts are objects (rows), except ``fields_changed``."""

    name: str
    portal: str
    dry_run: bool
    rows_compared: int = 0
    changed: int = 0  # objects with at least one field that differs from the warehouse's copy
    fields_changed: int = 0
    pushed: int = 0  # objects the portal applied this run
    failed: int = 0  # objects refused (or not taken) this run, or not pushable (not in the warehouse)
    deferred: int = 0  # changed objects left for the next run by max_changes
    recovered: int = 0  # unfinished pushes of an earlier run re-checked against the portal
    recovered_landed: int = 0  # ... of which the portal already held the values
    requests: int = 0  # HTTP requests this run made to the portal
    sample: list[dict[str, Any]] = field(default_factory=list)  # changes: key, field, warehouse, new
    errors: list[RowError] = field(default_factory=list)  # up to SAMPLE examples
    rejected: list[RowError] = field(default_factory=list, repr=False)  # query rows that cannot be pushed
    # (entity kind, id) whose values failed last time and are asked for unchanged: not sent again
    held_back: list[tuple[str, int]] = field(default_factory=list, repr=False)

    def metadata(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "rows_compared": self.rows_compared, "changed": self.changed,
                "fields_changed": self.fields_changed, "pushed": self.pushed, "failed": self.failed,
                "deferred": self.deferred, "recovered": self.recovered, "requests": self.requests,
                "sample": self.sample, "errors": [error.as_dict() for error in self.errors]}

    def add_failure(self, error: RowError) -> None:
        self.failed += 1
        if len(self.errors) < SAMPLE:
            self.errors.append(error)

    def reject(self, error: RowError) -> None:
        """A row of the query that cannot be pushed at all (no such object, unusable key)."""
        self.add_failure(error)
        self.rejected.append(error)


@dataclass(frozen=True)
class Change:
    kind: EntityKind
    entity_id: int
    fields: dict[str, Any]  # field -> value as sent on the wire
    differences: tuple[tuple[str, Any, Any], ...]  # (field, warehouse value, new value)

    def entry(self, writeback: str, status: PushStatus, error: str | None = None) -> PushEntry:
        text = fields_json(self.fields)
        return PushEntry(writeback, self.kind.key, self.entity_id, _hash(text), text, status, error)


def write_back(spec: WriteBackSpec, queue: OfflineQueue, warehouse: Warehouse, portal: str, *,
               dry_run: bool = True, max_changes: int = DEFAULT_MAX_CHANGES,
               registry: EntityRegistry | None = None) -> WriteBackReport:
    """Push the differences between ``spec``'s rows and the warehouse's copy of the portal.

    ``portal`` is the warehouse's key of the portal (the Dagster partition); ``queue`` carries the
    portal's client and the connector key the offline events were bound with. A dry run reads and
    compares only (no journal, no writes). Raises `LoopAvoidanceUnavailable` (before reading anything)
    when calls cannot carry that key, also on a dry run; `WriteBackBusy` (before reading anything)
    while another run of the same write-back pushes to the portal; `WriteBackError` when the query's
    columns do not fit the portal's fields; errors of whole requests (transport, auth) propagate after the
    journal recorded what was sent, for the next run to re-check.
    """
    if max_changes < 0:
        raise ValueError("max_changes must be >= 0")
    client = queue.client
    requests_before = client.usage.http_requests
    writer = WriteBack(queue)
    writer.require_loop_avoidance()
    report = WriteBackReport(spec.name, portal, dry_run)
    catalog = _Catalog(queue, registry)
    try:
        if dry_run:
            changes = _plan(spec, catalog, warehouse, portal, report)
            report.deferred = max(0, len(changes) - max_changes)
            return report
        # Two runs of one write-back on one portal would plan the same changes and both send them
        # before either journals its outcome: the second run stops here, having sent nothing.
        with ExitStack() as section:
            try:
                section.enter_context(warehouse.exclusive(f"writeback {spec.name} {portal}"))
            except WarehouseBusy:
                raise WriteBackBusy(f"write-back {spec.name} on {portal}: another run of it is pushing now; "
                                    "nothing was sent by this one") from None
            _recover(spec, catalog, warehouse, portal, report)
            changes = _plan(spec, catalog, warehouse, portal, report)
            taken, report.deferred = changes[:max_changes], max(0, len(changes) - max_changes)
            _journal_rejected(spec, warehouse, portal, report.rejected)
            for piece in in_groups(taken, REFRESH_SLICE):
                _push_slice(spec, writer, catalog, warehouse, portal, piece, report)
            _retire_failures(spec, warehouse, portal, changes, report.rejected, report.held_back)
            return report
    finally:
        report.requests = client.usage.http_requests - requests_before
        log.info("write-back %s on %s: %s", spec.name, portal,
                 {k: v for k, v in report.metadata().items() if k not in ("sample", "errors")})


# --- kinds and their fields ------------------------------------------------------------------


class _Catalog:
    """Entity kinds by name, and each kind's fields (``*.fields``, asked once per run)."""

    def __init__(self, queue: OfflineQueue, registry: EntityRegistry | None) -> None:
        self.client = queue.client
        self._registry = registry
        self._schemas: dict[str, TableSchema] = {}

    def kind(self, name: str) -> EntityKind | None:
        registry = self._registry or EntityRegistry.standard()
        found = _find_kind(registry, name)
        if found is None and self._registry is None and name.startswith(("item:", "items_")):
            self._registry = EntityRegistry.discover(self.client)
            found = _find_kind(self._registry, name)
        return found

    def schema(self, kind: EntityKind) -> TableSchema:
        if kind.key not in self._schemas:
            self._schemas[kind.key] = table_schema(self.client, kind)
        return self._schemas[kind.key]

    def field_of(self, kind: EntityKind, column: str) -> ColumnSpec | None:
        """The field a query column sets: by its Bitrix24 name (any case) or its warehouse column."""
        fields = [spec for spec in self.schema(kind).columns if not spec.source_part]
        for match in (lambda s: s.source_name == column, lambda s: s.source_name.lower() == column.lower(),
                      lambda s: s.name == column.lower()):
            for spec in fields:
                if match(spec):
                    return spec
        return None


def _find_kind(registry: EntityRegistry, name: str) -> EntityKind | None:
    for kind in registry:
        if name in (kind.key, kind.table):
            return kind
    return None


# --- recover ---------------------------------------------------------------------------------


def _recover(spec: WriteBackSpec, catalog: _Catalog, warehouse: Warehouse, portal: str,
             report: WriteBackReport) -> None:
    """Re-check pushes a crash left without an outcome against the portal's current state."""
    unfinished = [entry for entry in warehouse.pushes(portal, spec.name) if entry.status in UNFINISHED]
    if not unfinished:
        return
    report.recovered = len(unfinished)
    log.warning("write-back %s on %s: %d pushes of an interrupted run; re-reading them from the portal",
                spec.name, portal, len(unfinished))
    by_kind: dict[str, list[PushEntry]] = defaultdict(list)
    for entry in unfinished:
        by_kind[entry.entity_kind].append(entry)
    outcomes: list[PushEntry] = []
    fresh: dict[str, tuple[EntityKind, list[dict]]] = {}
    for kind_name, entries in by_kind.items():
        kind = catalog.kind(kind_name)
        if kind is None:
            outcomes.extend(_with(entry, PushStatus.NOT_SENT, "entity kind no longer on the portal")
                            for entry in entries)
            continue
        records = {int(r[kind.id_field]): r for r in fetch_by_ids(
            catalog.client, kind, [entry.entity_id for entry in entries]).records}
        fresh[kind.key] = (kind, list(records.values()))
        schema = catalog.schema(kind)
        for entry in entries:
            record = records.get(entry.entity_id)
            if record is None:
                outcomes.append(_with(entry, PushStatus.NOT_SENT, "the object is no longer on the portal"))
            elif entry.status is PushStatus.SENT or _holds(record, json.loads(entry.fields), schema):
                report.recovered_landed += 1
                outcomes.append(_with(entry, PushStatus.DONE))
            else:
                outcomes.append(_with(entry, PushStatus.NOT_SENT))
    _store(catalog, warehouse, portal, fresh.values(), outcomes)


def _with(entry: PushEntry, status: PushStatus, error: str | None = None) -> PushEntry:
    return PushEntry(entry.writeback, entry.entity_kind, entry.entity_id, entry.fields_hash, entry.fields,
                     status, error)


def _holds(record: Mapping[str, Any], fields: Mapping[str, Any], schema: TableSchema) -> bool:
    """Does the portal's record hold these field values (compared in each field's type)?"""
    types = {spec.source_name: spec.type for spec in schema.columns if not spec.source_part}
    return all(same_value(value, record.get(name), types.get(name, ColumnType.TEXT))
               for name, value in fields.items())


# --- plan ------------------------------------------------------------------------------------


def _plan(spec: WriteBackSpec, catalog: _Catalog, warehouse: Warehouse, portal: str,
          report: WriteBackReport) -> list[Change]:
    frame = warehouse.query_frame(spec.sql(warehouse), {"portal": portal})
    portal_column = next((column for column in frame.columns if str(column).lower() == "portal"), None)
    if portal_column is not None:
        # A row of another portal is never pushed here, whatever the query's filter says.
        foreign = frame[portal_column].astype("string") != portal
        for _, row in frame[foreign.fillna(True)].iterrows():
            report.reject(RowError(str(row.get("entity_kind", spec.entity_kind)), None,
                                   f"row of portal {row[portal_column]!r}, not of {portal!r}: not pushed"))
        frame = frame[~foreign.fillna(True)]
    rows = _targets(spec, frame, catalog, report)
    # Values the portal refused or stored differently last time are not sent again until the query
    # asks for other values: else every run would repeat the same write (and move the object's
    # modification time). The journal keeps them FAILED, so the check stays red meanwhile.
    refused = {(entry.entity_kind, entry.entity_id): entry.fields_hash
               for entry in warehouse.pushes(portal, spec.name, PushStatus.FAILED)}
    changes: list[Change] = []
    for kind, targets in rows.values():
        stored = _stored_records(warehouse, portal, kind, [entity_id for entity_id, _ in targets])
        # The amount's type, not its currency part's (same source name, a TEXT column beside it).
        schema_types = {spec_.source_name: spec_.type for spec_ in catalog.schema(kind).columns
                        if not spec_.source_part}
        for entity_id, wanted in targets:
            record = stored.get(entity_id)
            if record is None:
                report.reject(RowError(kind.key, entity_id, "not in the warehouse (deleted, or not synced yet)"))
                continue
            differences = tuple((name, record.get(name), value) for name, value in wanted.items()
                                if not same_value(value, record.get(name), schema_types[name]))
            if differences:
                change = Change(kind, entity_id, {name: wire_value(new, schema_types[name])
                                                  for name, _, new in differences},
                                differences)
                if refused.get((kind.key, entity_id)) == _hash(fields_json(change.fields)):
                    log.info("write-back %s: %s %s not sent again: the same values failed last time",
                             spec.name, kind.key, entity_id)
                    report.held_back.append((kind.key, entity_id))
                    continue
                changes.append(change)
    changes.sort(key=lambda change: (change.kind.key, change.entity_id))  # the cap takes a stable prefix
    report.changed = len(changes)
    report.fields_changed = sum(len(change.differences) for change in changes)
    report.sample = [{"key": f"{change.kind.key} {change.entity_id}", "field": name,
                      "warehouse": _shown(old), "new": _shown(new)}
                     for change in changes for name, old, new in change.differences][:SAMPLE]
    return changes


def _targets(spec: WriteBackSpec, frame: pd.DataFrame, catalog: _Catalog,
             report: WriteBackReport) -> dict[str, tuple[EntityKind, list[tuple[int, dict[str, Any]]]]]:
    """The query's rows as (kind key -> (kind, [(id, {field: value})])); rows without a usable key
    are errors."""
    columns = {str(column).lower(): column for column in frame.columns}
    if "id" not in columns:
        raise WriteBackError(f"write-back {spec.name}: the query has no id column")
    if "entity_kind" not in columns and spec.entity_kind is None:
        raise WriteBackError(f"write-back {spec.name}: the query has no entity_kind column and the "
                             "declaration names no entity_kind")
    value_columns = [column for column in frame.columns
                     if str(column).lower() not in (*KEY_COLUMNS, *IGNORED_COLUMNS)]
    if not value_columns:
        raise WriteBackError(f"write-back {spec.name}: the query sets no field (only {list(frame.columns)})")
    kind_values = frame[columns["entity_kind"]] if "entity_kind" in columns else None
    targets: dict[str, tuple[EntityKind, list[tuple[int, dict[str, Any]]]]] = {}
    fields: dict[tuple[str, str], ColumnSpec] = {}
    seen: set[tuple[str, int]] = set()
    ids = frame[columns["id"]].tolist()
    records = frame[value_columns].to_dict("records") if len(frame) else []
    for position, (raw_id, values) in enumerate(zip(ids, records, strict=True)):
        kind_name = str(kind_values.iloc[position]) if kind_values is not None else str(spec.entity_kind)
        report.rows_compared += 1
        kind = catalog.kind(kind_name)
        entity_id = _as_id(raw_id)
        if kind is None or entity_id is None:
            reason = (f"unknown entity kind {kind_name!r}" if kind is None
                      else f"id {raw_id!r} is not a positive integer")
            report.reject(RowError(kind_name, entity_id, reason))
            continue
        if (kind.key, entity_id) in seen:
            report.reject(RowError(kind.key, entity_id, "the query returns this object more than once"))
            continue
        seen.add((kind.key, entity_id))
        wanted: dict[str, Any] = {}
        for column, value in values.items():
            spec_ = fields.get((kind.key, str(column)))
            if spec_ is None:
                spec_ = catalog.field_of(kind, str(column))
                if spec_ is None:
                    raise WriteBackError(f"write-back {spec.name}: column {column!r} is not a field of "
                                         f"{kind.key} on portal {report.portal} (crm *.fields)")
                fields[(kind.key, str(column))] = spec_
            wanted[spec_.source_name] = value
        targets.setdefault(kind.key, (kind, []))[1].append((entity_id, wanted))
    return targets


def _stored_records(warehouse: Warehouse, portal: str, kind: EntityKind, ids: Sequence[int]) -> dict[int, dict]:
    """The live objects' records as the warehouse last received them from the portal (``_raw``)."""
    if kind.table not in warehouse.entity_tables():
        return {}
    found: dict[int, dict] = {}
    table = warehouse.relation(kind.table)
    for group in in_groups(sorted(set(ids)), 10_000):
        rows = warehouse.query(f"SELECT id, _raw FROM {table} WHERE portal = %(portal)s::text "
                               "AND _deleted_at IS NULL AND id IN (SELECT unnest(%(ids)s::bigint[]))",
                               {"portal": portal, "ids": group})
        for entity_id, raw in rows:
            found[int(entity_id)] = json.loads(raw) if isinstance(raw, str | bytes) else dict(raw)
    return found


def _as_id(value: Any) -> int | None:
    value = plain(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number > 0 else None


# --- push ------------------------------------------------------------------------------------


def _push_slice(spec: WriteBackSpec, writer: WriteBack, catalog: _Catalog, warehouse: Warehouse, portal: str,
                changes: Sequence[Change], report: WriteBackReport) -> None:
    """Push up to 2,500 objects (50 per request), then re-read and store the ones that landed."""
    landed: dict[str, tuple[EntityKind, list[Change]]] = {}
    for batch in _batches(changes):
        kind = batch[0].kind
        warehouse.record_pushes(portal, [change.entry(spec.name, PushStatus.INTENT) for change in batch])
        failpoint("writeback_after_intent")
        answers = writer.push(kind, {change.entity_id: change.fields for change in batch})
        failpoint("writeback_after_batch")
        outcomes, refused_license = [], None
        for change in batch:
            error = answers[change.entity_id]
            if error is None:
                outcomes.append(change.entry(spec.name, PushStatus.SENT))
                landed.setdefault(kind.key, (kind, []))[1].append(change)
            else:
                message = redact(str(error))
                outcomes.append(change.entry(spec.name, PushStatus.FAILED, message))
                report.add_failure(RowError(kind.key, change.entity_id, message))
                if isinstance(error, WrongLicense):
                    refused_license = error
        warehouse.record_pushes(portal, outcomes)
        if refused_license is not None:
            # The plan lost auth_connector since the feature check: nothing more may be written.
            raise LoopAvoidanceUnavailable(f"portal {catalog.client.portal}: a write with auth_connector was "
                                           f"refused ({refused_license}); stopping the write-back so that no "
                                           "write goes out without the connector key")
    _refresh(spec, catalog, warehouse, portal, landed.values(), report)


def _batches(changes: Sequence[Change]) -> Iterator[list[Change]]:
    by_kind: dict[str, list[Change]] = defaultdict(list)
    for change in changes:
        by_kind[change.kind.key].append(change)
    for group in by_kind.values():
        yield from in_groups(group, MAX_COMMANDS)


def _refresh(spec: WriteBackSpec, catalog: _Catalog, warehouse: Warehouse, portal: str,
             landed: Iterable[tuple[EntityKind, list[Change]]], report: WriteBackReport) -> None:
    """Re-read the pushed objects and store them with their ``done`` mark in one transaction."""
    fresh: list[tuple[EntityKind, list[dict]]] = []
    outcomes: list[PushEntry] = []
    for kind, changes in landed:
        records = {int(r[kind.id_field]): r for r in fetch_by_ids(
            catalog.client, kind, [change.entity_id for change in changes]).records}
        fresh.append((kind, list(records.values())))
        schema = catalog.schema(kind)
        for change in changes:
            record = records.get(change.entity_id)
            if record is None or _holds(record, change.fields, schema):
                # Applied (an object deleted meanwhile reaches the warehouse through the queue).
                report.pushed += 1
                outcomes.append(change.entry(spec.name, PushStatus.DONE))
                continue
            held = {name: record.get(name) for name in change.fields}
            message = f"the portal accepted the update but holds {_shown(held)}: read-only field or a value it changes"
            report.add_failure(RowError(kind.key, change.entity_id, message))
            outcomes.append(change.entry(spec.name, PushStatus.FAILED, message))
    _store(catalog, warehouse, portal, fresh, outcomes)


def _store(catalog: _Catalog, warehouse: Warehouse, portal: str,
           fresh: Iterable[tuple[EntityKind, list[dict]]], outcomes: list[PushEntry]) -> None:
    """Upsert re-read objects and journal outcomes together: the ``done`` mark never outlives its row."""
    frames = []
    for kind, records in fresh:
        schema = catalog.schema(kind)
        warehouse.ensure_table(schema)
        frame = _frame(kind, schema, records)
        if not frame.empty:
            frames.append((schema, frame))
    with warehouse.transaction() as tx:
        for schema, frame in frames:
            tx.upsert(portal, schema, frame)
        tx.record_pushes(portal, outcomes)


def _frame(kind: EntityKind, schema: TableSchema, records: list[dict]) -> pd.DataFrame:
    try:
        return frame_and_coercions(kind, schema, records)[0]
    except MalformedRecord:
        readable = []
        for record in records:
            try:
                frame_and_coercions(kind, schema, [record])
                readable.append(record)
            except MalformedRecord as error:
                log.error("write-back: %s; left to the sync", error)
        return frame_and_coercions(kind, schema, readable)[0]


def _journal_rejected(spec: WriteBackSpec, warehouse: Warehouse, portal: str, rejected: Sequence[RowError]) -> None:
    """Rows that cannot be pushed fail the write-back's check like refused ones, until the query changes."""
    empty = fields_json({})
    entries = [PushEntry(spec.name, error.entity_kind, error.entity_id, _hash(empty), empty, PushStatus.FAILED,
                         error.error) for error in rejected if error.entity_id is not None]
    if entries:
        warehouse.record_pushes(portal, entries)


def _retire_failures(spec: WriteBackSpec, warehouse: Warehouse, portal: str, changes: Sequence[Change],
                     rejected: Sequence[RowError], held_back: Sequence[tuple[str, int]]) -> None:
    """Failures the query no longer asks for (the row changed, went, or the portal holds the value)."""
    wanted = {(change.kind.key, change.entity_id) for change in changes}
    wanted |= {(error.entity_kind, error.entity_id) for error in rejected}
    wanted |= set(held_back)  # still asked for, still failing
    stale = [_with(entry, PushStatus.OBSOLETE, entry.error)
             for entry in warehouse.pushes(portal, spec.name, PushStatus.FAILED) if entry.key not in wanted]
    if stale:
        warehouse.record_pushes(portal, stale)


def failing(warehouse: Warehouse, portal: str, writeback: str, limit: int = SAMPLE) -> tuple[int, list[RowError]]:
    """How many objects of a write-back currently fail to push, and examples (key + Bitrix24 error)."""
    entries = warehouse.pushes(portal, writeback, PushStatus.FAILED)
    return len(entries), [RowError(e.entity_kind, e.entity_id, e.error or "") for e in entries[:limit]]


# --- journal and report text ---------------------------------------------------------------


def fields_json(fields: Mapping[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _shown(value: Any) -> Any:
    value = plain(value)
    if isinstance(value, Mapping):
        return {name: _shown(item) for name, item in value.items()}
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    return str(value)
