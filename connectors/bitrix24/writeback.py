"""Writing to the portal (reverse ETL) without our own writes coming back as events.

Bitrix24 writes no offline-queue row for a change made by the same app with the same
``auth_connector`` the handler was bound with (facts §2.12). `WriteBack` takes the connector key
from the `OfflineQueue` that bound the events, so the two cannot drift apart. Writes are batched
(50 per request) and never retried after an unclear outcome: a repeated add is a duplicate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from connectors.bitrix24.batch import Command
from connectors.bitrix24.entities import EntityKind
from connectors.bitrix24.errors import MalformedResponse
from connectors.bitrix24.offline import OfflineQueue


class WriteBack:
    def __init__(self, queue: OfflineQueue) -> None:
        self.queue = queue
        self.client = queue.client

    def add(self, kind: EntityKind, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """Create entities; returns their ids in the order of ``rows``."""
        commands = {f"add{index}": Command(kind.add_method, self._params(kind, {"fields": dict(fields)}))
                    for index, fields in enumerate(rows)}
        outcome = self.client.batch_all(commands)
        return [_new_id(kind, outcome.result(key)) for key in commands]

    def update(self, kind: EntityKind, changes: Mapping[int, Mapping[str, Any]]) -> None:
        """Change fields of existing entities: ``{id: {field: value}}``."""
        commands = {f"update{entity_id}": Command(kind.update_method, self._params(
            kind, {"id": entity_id, "fields": dict(fields)})) for entity_id, fields in changes.items()}
        outcome = self.client.batch_all(commands)
        for key in commands:
            outcome.result(key)

    def _params(self, kind: EntityKind, params: dict[str, Any]) -> dict[str, Any]:
        if kind.value_style == "item":
            params["entityTypeId"] = kind.entity_type_id
        connector = self.queue.connector
        if connector:
            params["auth_connector"] = connector
        return params


def _new_id(kind: EntityKind, result: Any) -> int:
    # Legacy *.add answers the new id; crm.item.add answers {"item": {...}} (facts §4.4).
    value = result.get("item", {}).get("id") if isinstance(result, Mapping) else result
    try:
        return int(value)
    except (TypeError, ValueError):
        raise MalformedResponse(kind.add_method, 200, "no id in the answer", repr(result)[:200]) from None
