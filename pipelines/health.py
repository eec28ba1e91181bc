"""How operators know the tables can be trusted: checks that can fail, and only on real trouble.

Freshness is Dagster's own: ``bitrix24/sync_watermark`` carries a `dg.FreshnessPolicy` (the daemon
turns it red when no sync landed within the window). The checks below are evaluated for the whole
fleet by the ``health_checks`` job (scheduled), not inside every sync run, so a sync every few seconds
does not leave the tables showing checks in progress, and no check needs a partition (partitioned
checks are a preview API):

* ``sync_watermark / every_portal_current``: every installed portal had a sync (or an empty queue
  confirmed by the sensor) within the freshness window; the stale ones are listed;
* ``sync_watermark / journal_healthy``: no reservation stays unacknowledged longer than a bound (a
  stuck portal whose runs keep failing, or a crash nobody recovered);
* every entity asset's ``value_coercions``: recent syncs stored every value in its column's type
  (a warning, with examples, when values were nulled; the record's ``_raw`` keeps them);
* ``reconciliation / every_portal_in_sync``: each installed portal's latest reconciliation (the
  hourly ``reconcile_portals`` runs) found no drift; the drifting portals are listed (changes still
  in flight are counted apart, never as drift);
* ``dead_letters / every_error_lane_empty``: each installed portal's latest error-lane drain left
  nothing in its error lane; the portals with dead letters are listed.

A reconciliation or error-lane drain of one portal launched by hand (the ``reconcile`` and
``drain_error_lane`` jobs) also evaluates that portal's own check with its examples
(``in_sync_with_portal``, ``error_lane_empty``).
"""

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import dagster as dg

from connectors.bitrix24 import QueuePeek
from connectors.sync.reconcile import DRIFT, TableReconciliation, reconcile
from connectors.warehouse import ErrorLaneEntry
from connectors.warehouse.journal import JOURNAL_TABLE
from pipelines.assets import (
    ENTITY_ASSETS,
    FRESHNESS_WINDOW,
    GROUP,
    SYNC_WATERMARK,
    VALUE_COERCIONS,
    WAREHOUSE_POOL,
    asset_key,
    portal_sync,
)
from pipelines.partitions import portals
from pipelines.resources import Bitrix24Resource, WarehouseResource

# A reservation is normally acknowledged within seconds; one older than this means the portal's
# runs keep failing after reserving (or nothing recovered a crash): time for an operator.
RESERVATION_BOUND = timedelta(minutes=30)
# value_coercions looks at the syncs of this window (the health job runs well inside it).
COERCION_WINDOW = timedelta(minutes=30)
EXAMPLES = 10  # stale portals, parked messages, coerced columns shown with a failing check
RECONCILIATION = asset_key("reconciliation")
DEAD_LETTERS = asset_key("dead_letters")
# The fleet checks look at each portal's latest reconciliation (hourly) and error-lane drain (every
# 15 minutes) within these windows: a missed schedule tick does not hide a drifting portal.
RECONCILE_LOOKBACK = timedelta(hours=2)
ERROR_LANE_LOOKBACK = timedelta(hours=1)


def _materializations_since(instance: dg.DagsterInstance, key: dg.AssetKey, since: datetime) -> Iterator:
    """Every materialization record of ``key`` (any partition) after ``since``, newest first."""
    cursor = None
    while True:
        page = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, after_timestamp=since.timestamp()), limit=1000, cursor=cursor)
        yield from page.records
        if not page.has_more:
            return
        cursor = page.cursor


def every_portal_current_check(window: timedelta = FRESHNESS_WINDOW) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=SYNC_WATERMARK, name="every_portal_current",
                    description="Every installed portal had its changes land (or its empty queue confirmed) "
                                f"within the last {window.total_seconds() / 60:g} minutes.")
    def _check(context: dg.AssetCheckExecutionContext, bitrix24: Bitrix24Resource) -> dg.AssetCheckResult:
        with bitrix24.state() as state:
            installed = {portal.key for portal in state.portals()}
        since = datetime.now(UTC) - window
        current = {record.partition_key
                   for record in _materializations_since(context.instance, SYNC_WATERMARK, since)}
        stale = sorted(installed - current)
        return dg.AssetCheckResult(passed=not stale, metadata={
            "portals": len(installed), "stale": len(stale),
            "stale_examples": dg.MetadataValue.json(stale[:EXAMPLES])})

    return _check


@dg.asset_check(asset=SYNC_WATERMARK, name="journal_healthy", pool=WAREHOUSE_POOL,
                description="No offline-event reservation has waited more than "
                            f"{RESERVATION_BOUND.total_seconds() / 60:.0f} minutes without being acknowledged.")
def journal_healthy(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    before = datetime.now(UTC) - RESERVATION_BOUND
    with warehouse.open() as wh:
        rows = wh.query(f"""SELECT portal, count(*), min(reserved_at) FROM {wh.relation(JOURNAL_TABLE)}
            WHERE status IN ('reserved', 'loaded') AND reserved_at < %(before)s
            GROUP BY portal ORDER BY min(reserved_at)""", {"before": before})
    stuck = [{"portal": portal, "reservations": int(count), "oldest": str(oldest)} for portal, count, oldest in rows]
    return dg.AssetCheckResult(passed=not stuck, metadata={
        "portals_stuck": len(stuck), "examples": dg.MetadataValue.json(stuck[:EXAMPLES])})


def value_coercions_check(asset_name: str) -> dg.AssetChecksDefinition:
    key = asset_key(asset_name)

    @dg.asset_check(asset=key, name="value_coercions",
                    description="Recent syncs stored every value in its column's type; warns, with examples, when "
                                "values that did not fit were stored as NULL (the record's _raw keeps them).")
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        since = datetime.now(UTC) - COERCION_WINDOW
        nulled = 0
        examples: dict[str, dict] = {}  # "portal / table" -> column -> {count, examples}
        for record in _materializations_since(context.instance, key, since):
            metadata = record.asset_materialization.metadata
            count = metadata.get("values_nulled")
            if count is None or not count.value:
                continue
            nulled += int(count.value)
            details = metadata.get(VALUE_COERCIONS)
            for table, columns in (details.value if details is not None else {}).items():
                if len(examples) < EXAMPLES:
                    examples.setdefault(f"{record.partition_key} / {table}", columns)
        return dg.AssetCheckResult(passed=nulled == 0, severity=dg.AssetCheckSeverity.WARN,
                                   metadata={"values_nulled": nulled, "columns": dg.MetadataValue.json(examples)})

    return _check


def _latest_per_portal(instance: dg.DagsterInstance, key: dg.AssetKey, since: datetime) -> dict[str, dict]:
    """``{portal: metadata values}`` of each partition's newest materialization of ``key`` after ``since``."""
    latest: dict[str, dict] = {}
    for record in _materializations_since(instance, key, since):  # newest first
        if record.partition_key and record.partition_key not in latest:
            latest[record.partition_key] = {name: value.value
                                            for name, value in record.asset_materialization.metadata.items()}
    return latest


@dg.asset_check(asset=RECONCILIATION, name="every_portal_in_sync",
                description="The latest reconciliation of every installed portal (within "
                            f"{RECONCILE_LOOKBACK.total_seconds() / 3600:g} hours) found no drift; lists the "
                            "portals that drifted (the scan repaired what it found).")
def every_portal_in_sync(context: dg.AssetCheckExecutionContext, bitrix24: Bitrix24Resource) -> dg.AssetCheckResult:
    reconciled, drifting = _per_portal_counts(context, bitrix24, RECONCILIATION, RECONCILE_LOOKBACK, "drift")
    return dg.AssetCheckResult(passed=not drifting, metadata={
        "portals_reconciled": reconciled, "portals_drifting": len(drifting),
        "drifting": dg.MetadataValue.json(dict(list(drifting.items())[:EXAMPLES]))})


@dg.asset_check(asset=DEAD_LETTERS, name="every_error_lane_empty",
                description="No installed portal's latest error-lane drain (within "
                            f"{ERROR_LANE_LOOKBACK.total_seconds() / 3600:g} hours) left objects in its error "
                            "lane; lists the portals with dead letters and how many.")
def every_error_lane_empty(context: dg.AssetCheckExecutionContext,
                           bitrix24: Bitrix24Resource) -> dg.AssetCheckResult:
    drained, waiting = _per_portal_counts(context, bitrix24, DEAD_LETTERS, ERROR_LANE_LOOKBACK, "depth")
    return dg.AssetCheckResult(passed=not waiting, metadata={
        "portals_drained": drained, "portals_with_dead_letters": len(waiting),
        "dead_letters": dg.MetadataValue.json(dict(list(waiting.items())[:EXAMPLES]))})


def _per_portal_counts(context: dg.AssetCheckExecutionContext, bitrix24: Bitrix24Resource, asset: dg.AssetKey,
                       lookback: timedelta, count: str) -> tuple[int, dict[str, int]]:
    """Over the installed portals whose ``asset`` was materialized within ``lookback``: how many there
    are, and ``{portal: its latest materialization's count metadata}`` for those where it is not 0."""
    with bitrix24.state() as state:
        installed = {portal.key for portal in state.portals()}
    latest = _latest_per_portal(context.instance, asset, datetime.now(UTC) - lookback)
    seen = sorted(installed & set(latest))
    return len(seen), {key: int(latest[key][count]) for key in seen if latest[key].get(count)}


FLEET_MAINTENANCE_CHECKS = [every_portal_in_sync, every_error_lane_empty]


def health_checks(freshness_window: timedelta = FRESHNESS_WINDOW) -> list[dg.AssetChecksDefinition]:
    """The checks the ``health_checks`` job evaluates for the whole fleet."""
    return [every_portal_current_check(freshness_window), journal_healthy,
            *(value_coercions_check(name) for name in ENTITY_ASSETS), *FLEET_MAINTENANCE_CHECKS]


HEALTH_CHECKS = health_checks()


class ReconcileConfig(dg.Config):
    repair: bool = True  # upsert missing and stale objects, tombstone the ones the portal lacks


@dg.asset(
    key=RECONCILIATION,
    deps=[asset_key(name) for name in ENTITY_ASSETS],
    partitions_def=portals,
    group_name=GROUP,
    kinds={"bitrix24"},
    pool=WAREHOUSE_POOL,
    check_specs=[dg.AssetCheckSpec(
        "in_sync_with_portal", asset=RECONCILIATION,
        description="The portal's ids and modification times match the warehouse (changes still in flight "
                    "are counted apart, never as drift).")],
)
def reconciliation(context: dg.AssetExecutionContext, config: ReconcileConfig, bitrix24: Bitrix24Resource,
                   warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Ids and modification times compared between the portal and the warehouse, per table; repairs drift."""
    with portal_sync(context, bitrix24, warehouse, release=True) as sync:
        reports = reconcile(sync, repair=config.repair)
    metadata = reconciliation_numbers(reports, config.repair)
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[dg.AssetCheckResult(
            check_name="in_sync_with_portal", passed=metadata["drift"] == 0,
            metadata={**{key: value for key, value in metadata.items() if key not in ("repaired", "tables")},
                      "examples": {r.table: r.examples for r in reports if r.examples}})],
    )


def reconciliation_numbers(reports: Sequence[TableReconciliation], repaired: bool) -> dict:
    """``reconciliation`` metadata from one portal's reports: each drift count (`DRIFT`) and
    ``in_flight`` summed over tables, ``drift`` (their total), ``repaired``, and per table the rows
    on each side with its counts."""
    counted = (*DRIFT, "in_flight")
    totals = {name: sum(getattr(r, name) for r in reports) for name in counted}
    by_table = {r.table: {"portal": r.portal_rows, "warehouse": r.warehouse_live_rows,
                          **{name: getattr(r, name) for name in counted}} for r in reports}
    return {**totals, "drift": sum(r.drift for r in reports), "repaired": repaired, "tables": by_table}


@dg.asset(
    key=DEAD_LETTERS,
    # After the drain's ack, which always materializes the watermark (an entity asset is only
    # materialized when the drain changed its table, and a skipped upstream would skip this too).
    deps=[SYNC_WATERMARK],
    partitions_def=portals,
    group_name=GROUP,
    kinds={"bitrix24"},
    pool=WAREHOUSE_POOL,  # it reads the ledger: a DuckDB file admits no other handle beside its writer
    check_specs=[dg.AssetCheckSpec(
        "error_lane_empty", asset=DEAD_LETTERS,
        description="No object waits in the error lane (each example shows its attempts and last error).")],
)
def dead_letters(context: dg.AssetExecutionContext, bitrix24: Bitrix24Resource,
                 warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Objects Bitrix24 keeps in our error lane because syncing them failed repeatedly."""
    with bitrix24.state() as state, bitrix24.client(context.partition_key, state) as client:
        peek = bitrix24.queue(client).peek(error_lane=True)
    with warehouse.open() as wh:
        parked = wh.error_lane(context.partition_key, limit=EXAMPLES)
    numbers = dead_letter_numbers(peek, parked)
    return dg.MaterializeResult(
        metadata=numbers,
        check_results=[dg.AssetCheckResult(check_name="error_lane_empty", passed=peek.depth == 0,
                                           metadata=numbers)],
    )


def dead_letter_numbers(peek: QueuePeek, parked: Sequence[ErrorLaneEntry]) -> dict:
    """``dead_letters`` metadata: ``depth`` (rows in the error lane, ``event.offline.list`` ERROR=1),
    ``oldest`` (ISO time of its head, or None) and up to `EXAMPLES` parked messages from the ledger."""
    examples = [{"message_id": entry.message_id, "object": f"{entry.entity_kind} {entry.entity_id}",
                 "attempts": entry.attempts, "last_error": entry.last_error,
                 "last_failed_at": entry.last_failed_at.isoformat()} for entry in parked[:EXAMPLES]]
    return {"depth": peek.depth, "oldest": peek.head.timestamp.isoformat() if peek.head else None,
            "examples": examples}
