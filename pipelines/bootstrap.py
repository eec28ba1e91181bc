"""A new portal's first load, for many portals per run: ``full_resync_portals`` binds each portal's
offline events, scans every entity kind (tombstoning what the portal lacks), then loads its
reference data, stage history and product rows, so the analysts' views answer as soon as the run ends.

The sensor asks for these runs (up to ``Bitrix24Resource.bootstrap_portals_per_run`` new portals each): one run
per new portal cost seconds of process start each, and 100 new portals took about 19 minutes that way
(benchmarks/fleet_bootstrap.py measures the grouped load). Each portal is its own partition, and a
portal whose resync fails fails only its part (the sensor asks again for it, a bounded number of times).
"""

import time
from contextlib import AbstractContextManager

import dagster as dg

from connectors.sync.staging import SyncMode
from pipelines.assets import WAREHOUSE_POOL
from pipelines.fleet import SCAN_MAX_RUNTIME_S, FleetSyncConfig, drain, fleet_job, for_each_portal, warehouse_writes
from pipelines.reference import refresh_portal
from pipelines.resources import Bitrix24Resource, WarehouseResource

CLAIM_WAIT_S = 300  # a change sync holding the portal's drain claim ends in seconds
CLAIM_POLL_S = 5


@dg.op(pool=WAREHOUSE_POOL, tags={"kind": "bitrix24"})
def full_resync_portal_group(context: dg.OpExecutionContext, config: FleetSyncConfig,
                             bitrix24: Bitrix24Resource, warehouse: WarehouseResource) -> dg.Output[dict]:
    """For every configured portal, several at a time: bind its offline events, scan each entity kind
    and tombstone what the portal lacks, then load its reference data (the bootstrap of new portals,
    or a repair)."""
    writes = warehouse_writes(warehouse)
    return for_each_portal(context, config, lambda portal: _bootstrap(context, config, bitrix24, warehouse,
                                                                      writes, portal))


class PortalBusy(Exception):
    """Another run held the portal's drain claim for longer than a bootstrap waits."""


def _bootstrap(context: dg.OpExecutionContext, config: FleetSyncConfig, bitrix24: Bitrix24Resource,
               warehouse: WarehouseResource, writes: AbstractContextManager,
               portal: str) -> list[dg.AssetMaterialization]:
    """The portal's full resync, then its reference data. A run draining the portal (a change sync
    started before its resync was asked for) is waited for: skipping would leave the portal unloaded
    while its run succeeds. Raises `PortalBusy` (the portal's part fails; the sensor asks again)."""
    deadline = time.monotonic() + CLAIM_WAIT_S
    while True:
        try:
            loaded = drain(context, config, bitrix24, warehouse, SyncMode.FULL_RESYNC, writes, portal)
            break
        except dg.RetryRequested:
            if time.monotonic() >= deadline:
                raise PortalBusy(f"another run held the portal's drain claim for {CLAIM_WAIT_S} s") from None
            time.sleep(CLAIM_POLL_S)
    try:
        return loaded + refresh_portal(portal, bitrix24, warehouse, writes)
    except Exception as error:  # the CRM data is in; the 15-minute schedule refreshes reference data
        context.log.warning(f"portal {portal}: loaded, but its reference data could not be refreshed "
                            f"({type(error).__name__}: {error}); the scheduled refresh retries")
        return loaded


full_resync_portals_job = fleet_job(
    "full_resync_portals", full_resync_portal_group,
    "Bind the offline events of several portals, scan every entity and tombstone what each portal lacks, then "
    "load its reference data; each portal is its own partition.", SCAN_MAX_RUNTIME_S)
