"""Writing to the portal (reverse ETL) without our own writes coming back as events.

Bitrix24 writes no offline-queue row for a change made by the same app with the same
``auth_connector`` the handler was bound with (facts §2.12). `WriteBack` takes the connector key
from the `OfflineQueue` that bound the events, so the two cannot drift apart. Writes are batched
(50 per request) and never retried after an unclear outcome: a repeated add is a duplicate.
`require_loop_avoidance` refuses a portal whose plan cannot carry the key; `push` answers per object,
for the write-back (`connectors.sync.writeback`) to journal each outcome.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from connectors.bitrix24.batch import MAX_COMMANDS, Command
from connectors.bitrix24.entities import EntityKind
from connectors.bitrix24.errors import ApiError, Bitrix24Error, MalformedResponse
from connectors.bitrix24.offline import FEATURE_AUTH_CONNECTOR, OfflineQueue


class LoopAvoidanceUnavailable(Bitrix24Error):
    """Writing now would feed our own writes back to us as changes: no connector key can be sent."""


class WriteBack:
    def __init__(self, queue: OfflineQueue) -> None:
        self.queue = queue
        self.client = queue.client

    def require_loop_avoidance(self) -> str:
        """The connector key every write will carry; raises `LoopAvoidanceUnavailable` when there is none.

        Bitrix24 keeps a change out of a handler's queue only when the app wrote it with the
        ``auth_connector`` the handler was bound with (facts §2.12), and accepts that parameter only
        on plans with ``rest_auth_connector`` (Professional and above; otherwise 403 WRONG_LICENSE,
        facts §2.2). Without it every pushed object would come back through the offline queue as if
        a user had changed it, and be re-read and re-loaded (a write-back that depends on the
        warehouse would push again: a loop), so nothing is written at all.
        """
        if not self.queue.requested_connector:
            raise LoopAvoidanceUnavailable(
                f"portal {self.client.portal}: no connector key is configured, so write-back calls could "
                "not carry auth_connector and our own writes would come back through the offline queue "
                "as changes; configure the connector key the events are bound with")
        if not self.queue.features(refresh=True).auth_connector:
            raise LoopAvoidanceUnavailable(
                f"portal {self.client.portal}: the plan lacks {FEATURE_AUTH_CONNECTOR} (WRONG_LICENSE; "
                "Professional plan and above), so write-back calls cannot carry auth_connector and "
                "Bitrix24 would queue our own writes as changes for the connector's event handlers: "
                "every pushed object would come back through the offline queue and be synced again, "
                "a loop. Nothing was written; upgrade the portal's plan to enable write-back")
        return self.queue.requested_connector

    def push(self, kind: EntityKind, changes: Mapping[int, Mapping[str, Any]]) -> dict[int, ApiError | None]:
        """One ``batch`` request of at most 50 ``*.update`` commands; per entity id, None when the
        portal applied it or the error it answered for that command (``result_error``, facts §5).

        A failed command does not stop the others (``halt=0``). A request whose answer is lost
        raises (`TransportError`): such writes are not repeated blindly (see the module docstring).
        Call `require_loop_avoidance` first: this sends whatever key the queue has.
        """
        if len(changes) > MAX_COMMANDS:
            raise ValueError(f"a push holds at most {MAX_COMMANDS} updates, got {len(changes)}")
        commands = {f"u{entity_id}": Command(kind.update_method, self._params(
            kind, {"id": entity_id, "fields": dict(fields)})) for entity_id, fields in changes.items()}
        if not commands:
            return {}
        outcome = self.client.batch(commands)
        answers: dict[int, ApiError | None] = {}
        for key, entity_id in zip(commands, changes, strict=True):
            if key in outcome.errors:
                answers[entity_id] = outcome.errors[key]
            elif key in outcome.results:
                answers[entity_id] = None
            else:
                answers[entity_id] = ApiError("NOT_RUN", "the batch answered nothing for this command",
                                              method=kind.update_method)
        return answers

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
