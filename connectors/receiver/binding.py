"""What an install sets up on the portal: offline events for every entity kind, and the push."""

from __future__ import annotations

from collections.abc import Mapping

from connectors.bitrix24 import Bitrix24Client, EntityRegistry, OfflineQueue

PUSH_EVENT = "ONOFFLINEEVENT"


def bind_portal(client: Bitrix24Client, connector: str, handler_url: str | None, min_timeout_s: int) -> None:
    """Idempotent: bound handlers are left alone (event.get is read first). No ``handler_url``: no push."""
    OfflineQueue(client, connector).bind(EntityRegistry.discover(client))
    if handler_url is None:
        return
    handlers = client.call("event.get").result or []
    already = any(isinstance(row, Mapping) and str(row.get("event", "")).upper() == PUSH_EVENT
                  and row.get("handler") == handler_url for row in handlers)
    if not already:
        # An online handler; minTimeout caps the pushes to one per that many seconds (facts §2.13).
        client.call("event.bind", {"event": PUSH_EVENT, "handler": handler_url,
                                   "options": {"minTimeout": min_timeout_s}})
