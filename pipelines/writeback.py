"""Write-backs as Dagster assets: a warehouse query's results pushed into each portal's CRM.

``writeback_asset("lead_scores", view="lead_scores", deps=[...])`` declares one: an asset partitioned
by portal that runs `connectors.sync.writeback.write_back` and reports what it compared, changed and
pushed. It is a dry run until declared ``live=True`` (or run with ``dry_run: false``): the dry run's
metadata shows how many objects would change and a sample of the changes. Its check
``pushed_without_errors`` fails while objects of this write-back fail to push, with examples (key and
the Bitrix24 error) from the write-back journal.
"""

from collections.abc import Sequence

import dagster as dg

from connectors.bitrix24 import LoopAvoidanceUnavailable
from connectors.sync.writeback import (
    DEFAULT_MAX_CHANGES,
    SAMPLE,
    WriteBackBusy,
    WriteBackSpec,
    failing,
    write_back,
)
from pipelines.assets import GROUP, WAREHOUSE_POOL
from pipelines.partitions import portals
from pipelines.resources import Bitrix24Resource, WarehouseResource

CHECK = "pushed_without_errors"


class WriteBackConfig(dg.Config):
    dry_run: bool | None = None  # None: as declared (a dry run unless the write-back is declared live)
    max_changes: int = DEFAULT_MAX_CHANGES  # objects pushed per run and portal; the rest waits


def writeback_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["bitrix24", "writeback", name])


def writeback_op_name(name: str) -> str:
    """The op name to address in run config: ``{"ops": {<this>: {"config": {"dry_run": False}}}}``."""
    return writeback_key(name).to_python_identifier()


def writeback_asset(name: str, *, query: str | None = None, view: str | None = None,
                    entity_kind: str | None = None, deps: Sequence[dg.AssetKey | str | dg.AssetsDefinition] = (),
                    live: bool = False, description: str | None = None) -> dg.AssetsDefinition:
    """An asset pushing ``query``'s rows (or ``view``'s, filtered to the portal) into Bitrix24.

    The rows are one per target object: ``entity_kind``, ``id`` and the fields to set (see
    `connectors.sync.writeback`). ``deps`` are the assets the query reads (e.g. the asset of the
    view), so the write-back runs after them. ``live=False`` (the default) makes every run a dry run
    unless its config says ``dry_run: false``.
    """
    if (query is None) == (view is None):
        raise ValueError("declare a write-back with exactly one of query= or view=")
    spec = WriteBackSpec.from_view(name, view, entity_kind) if view else WriteBackSpec(name, str(query), entity_kind)
    key = writeback_key(name)

    @dg.asset(
        key=key,
        deps=list(deps),
        partitions_def=portals,
        group_name=GROUP,
        kinds={"bitrix24"},
        pool=WAREHOUSE_POOL,  # it writes the journal and the refreshed rows into the warehouse
        description=description or f"Warehouse results of {view or 'the declared query'} pushed into the CRM.",
        check_specs=[dg.AssetCheckSpec(CHECK, asset=key, description=(
            "No object of this write-back is failing to push (examples: key and the Bitrix24 error)."))],
    )
    def _writeback(context: dg.AssetExecutionContext, config: WriteBackConfig, bitrix24: Bitrix24Resource,
                   warehouse: WarehouseResource) -> dg.MaterializeResult:
        portal = context.partition_key
        dry_run = (not live) if config.dry_run is None else config.dry_run
        with bitrix24.state() as state, bitrix24.client(portal, state) as client, warehouse.open() as wh:
            try:
                report = write_back(spec, bitrix24.queue(client), wh, portal, dry_run=dry_run,
                                    max_changes=config.max_changes)
            except (LoopAvoidanceUnavailable, WriteBackBusy) as error:
                raise dg.Failure(description=str(error)) from None
            count, examples = failing(wh, portal, name)
        # Rows without a usable key (an id that is no id, another portal's row) have nothing to journal
        # under, but they fail too: the check counts them from this run's report.
        unkeyed = [error for error in report.rejected if error.entity_id is None]
        count, examples = count + len(unkeyed), (unkeyed + examples)[:SAMPLE]
        if dry_run:
            context.log.warning(f"DRY RUN: {report.changed} objects would change ({report.fields_changed} fields); "
                                f"nothing was written. Run with dry_run: false (op {writeback_op_name(name)}) "
                                "or declare the write-back live=True to push.")
        metadata = report.metadata()
        failing_now = {"failing": count, "examples": dg.MetadataValue.json([e.as_dict() for e in examples])}
        return dg.MaterializeResult(
            metadata={**metadata, "sample": dg.MetadataValue.json(metadata["sample"]),
                      "errors": dg.MetadataValue.json(metadata["errors"]), "failing": count},
            check_results=[dg.AssetCheckResult(check_name=CHECK, passed=count == 0, metadata=failing_now)],
        )

    return _writeback
