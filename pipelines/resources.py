"""Dagster resources: the Bitrix24 app (with its state store) and the warehouse.

Every setting is a resource field. Secrets and places arrive through `dg.EnvVar` (see
`pipelines.definitions`), so they resolve at launch and never sit in run config; numbers have
defaults a deployment overrides where it builds its definitions (`build_definitions`).
"""

from __future__ import annotations

import dagster as dg

from connectors.bitrix24 import Bitrix24Client, OAuthApp, OfflineQueue, RateLimits
from connectors.bitrix24.auth import DEFAULT_TOKEN_URL
from connectors.state import StateStore, open_state_store
from connectors.sync.portal import DEFAULT_CONNECTOR, portal_client
from connectors.warehouse import Warehouse, open_warehouse

OAUTH_TOKEN_URL = DEFAULT_TOKEN_URL


class Bitrix24Resource(dg.ConfigurableResource):
    """A Bitrix24 OAuth application and the state store holding its portals and tokens."""

    client_id: str
    client_secret: str
    oauth_token_url: str = OAUTH_TOKEN_URL
    state_store: str  # SQLite file path or postgresql:// DSN
    connector: str = DEFAULT_CONNECTOR  # auth_connector key: our queue, and no echo of our writes
    burst: int = 50  # the portal's leaky bucket: 50/2 on most plans, 250/5 on Enterprise
    drain_per_s: float = 2.0
    operating_limit_s: float = 480.0
    # A portal without push signals (ONOFFLINEEVENT) has its queue peeked at most this often.
    peek_interval_s: float = 60.0
    # An empty queue renews the portal's sync watermark at most this often: well inside the
    # freshness window (pipelines.assets.FRESHNESS_WINDOW), and a few event-log rows per idle portal.
    confirm_current_every_s: float = 120.0
    # Portals with pending rows are drained together, up to this many per run (pipelines.fleet): a
    # run per portal costs seconds of process start and dozens of event-log rows.
    portals_per_run: int = 50
    # sync_portals runs queued or running at once; while that many are, pending portals wait for the
    # next run, which then takes more of them (up to portals_per_run). Raise it with the machines that
    # run them (deploy/): on one 2-core machine more runs only share the same CPU.
    sync_runs_in_flight: int = 4
    # New portals per full_resync_portals run: a real portal's first load takes minutes to hours, and a
    # run's portals share its max runtime (pipelines.bootstrap).
    bootstrap_portals_per_run: int = 25
    # Scheduled maintenance (error-lane drain, reconciliation, reference refresh) likewise: a schedule
    # tick asks for ceil(portals / this) runs instead of one per portal.
    maintenance_portals_per_run: int = 25

    def state(self) -> StateStore:
        return open_state_store(self.state_store)

    def oauth_app(self) -> OAuthApp:
        return OAuthApp(self.client_id, self.client_secret, token_url=self.oauth_token_url)

    def client(self, portal: str, state: StateStore | None = None) -> Bitrix24Client:
        app = self.oauth_app()
        limits = RateLimits(burst=self.burst, drain_per_s=self.drain_per_s,
                            operating_limit_s=self.operating_limit_s)
        return portal_client(app, state or self.state(), portal, limits)

    def queue(self, client: Bitrix24Client) -> OfflineQueue:
        return OfflineQueue(client, self.connector)


class WarehouseResource(dg.ConfigurableResource):
    """Where the entity tables live: a DuckDB file (default) or a PostgreSQL DSN."""

    url: str  # DuckDB file path, or postgresql://... (a ?schema= parameter names the schema)
    schema_name: str = "bitrix24"  # PostgreSQL schema of the tables and views, unless the URL names one
    snapshot_path: str | None = None  # DuckDB: the read-only copy analysts open (default: beside the file)
    # DuckDB: publish the snapshot after every commit (0), or at most every N seconds on big files
    # where copying it costs more than the sync (about 1 s per 400 MB here).
    snapshot_every_s: float = 0.0

    def open(self) -> Warehouse:
        return open_warehouse(self.url, schema=self.schema_name, snapshot_path=self.snapshot_path,
                              publish_every=self.snapshot_every_s)
