"""Everything one portal's sync needs, in one place: its client, queue, entity registry, warehouse."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from connectors.bitrix24 import Bitrix24Client, EntityRegistry, OfflineQueue
from connectors.warehouse import Warehouse

# Our own key for auth_connector: a separate queue for us, and our write-backs never come back
# as events (facts §2.12).
DEFAULT_CONNECTOR = "b24wh"


@dataclass
class PortalSync:
    portal: str  # the hostname-like portal key (also the Dagster partition key)
    client: Bitrix24Client
    warehouse: Warehouse
    staging_dir: Path  # this run's hand-over directory: <root>/<portal>/<run> (connectors.sync.staging)
    connector: str = DEFAULT_CONNECTOR
    max_events: int = 25_000  # per run; a bigger backlog is worked off by the following runs
    # Sibling run directories still needed (a run retried from failure reads its parent's files).
    keep_staging: tuple[str, ...] = ()
    queue: OfflineQueue = field(init=False)

    def __post_init__(self) -> None:
        self.queue = OfflineQueue(self.client, self.connector)
        self.staging_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    @cached_property
    def registry(self) -> EntityRegistry:
        """The standard kinds plus this portal's smart-process types (one crm.type.list call)."""
        return EntityRegistry.discover(self.client)
