"""How operators know the tables can be trusted: asset checks, reconciliation, the error lane.

* every entity asset: its ids are unique per portal, its last sync's lag is small, and its last sync
  stored every value in its column's type (a warning, with examples, when values were nulled);
* ``bitrix24/reconciliation``: an id + modification-time scan against the portal (scheduled),
  repairing what it finds; its check fails only on real drift (missing, extra, stale, ahead, revived),
  never on changes still in flight (queued, or newer than the last reservation), reported apart;
* ``bitrix24/dead_letters``: the depth of the error lane after a drain; its check fails while
  objects are parked there, so a poisoned object is never silently dropped.
"""

import dagster as dg

from connectors.sync.reconcile import DRIFT, reconcile
from pipelines.assets import VALUE_COERCIONS, WAREHOUSE_POOL, portal_sync
from pipelines.partitions import portals
from pipelines.resources import Bitrix24Resource, WarehouseResource
from pipelines.tables import ENTITY_ASSETS, asset_key

MAX_LAG_S = 300.0  # the promise is "fresh within a minute"; five minutes of lag is an incident
EXAMPLES = 10  # parked messages shown with the dead-letter check (the CLI lists them all)
RECONCILIATION = dg.AssetKey(["bitrix24", "reconciliation"])
DEAD_LETTERS = dg.AssetKey(["bitrix24", "dead_letters"])


def _tables_of(asset_name: str, warehouse_tables: list[str]) -> list[str]:
    prefix = ENTITY_ASSETS[asset_name]
    return [t for t in warehouse_tables if t == prefix or (prefix.endswith("_") and t.startswith(prefix))]


def unique_ids_check(asset_name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset_key(asset_name), name="unique_ids", partitions_def=portals, pool=WAREHOUSE_POOL,
                    description="Each object appears once per portal (the upsert key holds).")
    def _check(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
        duplicates: dict[str, int] = {}
        rows = 0
        with warehouse.open() as wh:
            for table in _tables_of(asset_name, wh.entity_tables()):
                ids = wh.row_versions(context.partition_key, table)["id"]
                rows += len(ids)
                duplicates[table] = int(ids.duplicated().sum())
        return dg.AssetCheckResult(passed=not any(duplicates.values()),
                                   metadata={"rows": rows, "duplicates": sum(duplicates.values())})

    return _check


def _last_sync(context: dg.AssetCheckExecutionContext, asset_name: str) -> dict[str, dg.MetadataValue] | None:
    """The metadata of the asset's latest materialization for this portal; None before the first."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key(asset_name), asset_partitions=[context.partition_key]),
        limit=1).records
    return records[0].asset_materialization.metadata if records else None


def sync_lag_check(asset_name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset_key(asset_name), name="sync_lag", partitions_def=portals,
                    description=f"The oldest change of the last sync waited under {MAX_LAG_S:.0f} s.")
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        metadata = _last_sync(context, asset_name)
        if metadata is None:
            return dg.AssetCheckResult(passed=True, metadata={"lag_s": 0.0, "synced": False})
        lag = metadata.get("lag_s")
        lag_s = float(lag.value) if lag is not None else 0.0
        return dg.AssetCheckResult(passed=lag_s <= MAX_LAG_S, metadata={"lag_s": lag_s})

    return _check


def value_coercions_check(asset_name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset_key(asset_name), name="value_coercions", partitions_def=portals,
                    description="The last sync stored every value in its column's type; warns, with examples, "
                                "when values that did not fit were stored as NULL (the record's _raw keeps them).")
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        metadata = _last_sync(context, asset_name) or {}
        nulled = metadata.get("values_nulled")
        count = int(nulled.value) if nulled is not None else 0
        details = metadata.get(VALUE_COERCIONS)
        return dg.AssetCheckResult(
            passed=count == 0, severity=dg.AssetCheckSeverity.WARN,
            metadata={"values_nulled": count,
                      "columns": dg.MetadataValue.json(details.value if details is not None else {})})

    return _check


ENTITY_CHECKS = [factory(name) for name in ENTITY_ASSETS
                 for factory in (unique_ids_check, sync_lag_check, value_coercions_check)]


class ReconcileConfig(dg.Config):
    repair: bool = True  # upsert missing and stale objects, tombstone the ones the portal lacks


@dg.asset(
    key=RECONCILIATION,
    deps=[asset_key(name) for name in ENTITY_ASSETS],
    partitions_def=portals,
    group_name="bitrix24",
    pool=WAREHOUSE_POOL,
    check_specs=[dg.AssetCheckSpec("in_sync_with_portal", asset=RECONCILIATION)],
)
def reconciliation(context: dg.AssetExecutionContext, config: ReconcileConfig, bitrix24: Bitrix24Resource,
                   warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Ids and modification times compared between the portal and the warehouse, per table."""
    with portal_sync(context, bitrix24, warehouse) as sync:
        reports = reconcile(sync, repair=config.repair)
    counted = (*DRIFT, "in_flight")
    totals = {name: sum(getattr(r, name) for r in reports) for name in counted}
    by_table = {r.table: {"portal": r.portal_rows, "warehouse": r.warehouse_live_rows,
                          **{name: getattr(r, name) for name in counted}} for r in reports}
    drift = sum(r.drift for r in reports)
    return dg.MaterializeResult(
        metadata={**totals, "drift": drift, "repaired": config.repair, "tables": by_table},
        check_results=[dg.AssetCheckResult(
            check_name="in_sync_with_portal", passed=drift == 0,
            metadata={**totals, "drift": drift,
                      "examples": {r.table: r.examples for r in reports if r.examples}})],
    )


@dg.asset(
    key=DEAD_LETTERS,
    deps=[asset_key(name) for name in ENTITY_ASSETS],
    partitions_def=portals,
    group_name="bitrix24",
    pool=WAREHOUSE_POOL,  # it reads the ledger: a DuckDB file admits no other handle beside its writer
    check_specs=[dg.AssetCheckSpec(
        "error_lane_empty", asset=DEAD_LETTERS,
        description="No object waits in the error lane (each example shows its attempts and last error).")],
)
def dead_letters(context: dg.AssetExecutionContext, bitrix24: Bitrix24Resource,
                 warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Objects Bitrix24 keeps in our error lane because syncing them failed repeatedly."""
    with bitrix24.client(context.partition_key) as client:
        peek = bitrix24.queue(client).peek(error_lane=True)
    with warehouse.open() as wh:
        parked = wh.error_lane(context.partition_key, limit=EXAMPLES)
    oldest = peek.head.timestamp.isoformat() if peek.head else None
    examples = [{"message_id": entry.message_id, "object": f"{entry.entity_kind} {entry.entity_id}",
                 "attempts": entry.attempts, "last_error": entry.last_error,
                 "last_failed_at": entry.last_failed_at.isoformat()} for entry in parked]
    numbers = {"depth": peek.depth, "oldest": oldest, "examples": examples}
    return dg.MaterializeResult(
        metadata=numbers,
        check_results=[dg.AssetCheckResult(check_name="error_lane_empty", passed=peek.depth == 0,
                                           metadata=numbers)],
    )
