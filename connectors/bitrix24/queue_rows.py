"""Offline-queue rows as typed values.

``event.offline.get`` returns six keys per row and ``event.offline.list`` eight (facts §2.7-§2.8):
``ID`` is a string, ``TIMESTAMP_X`` ISO 8601 with offset, ``EVENT_DATA`` the handler payload,
``MESSAGE_ID`` a 32-hex md5 stable per (event name, object).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from connectors.bitrix24.errors import MalformedResponse


@dataclass(frozen=True)
class QueueEvent:
    row_id: int  # ID: the queue row, not the CRM object
    timestamp: datetime  # TIMESTAMP_X, aware; the last occurrence of this change
    event_name: str
    event_data: Any
    message_id: str
    process_id: str | None = None  # the reservation it came from (None when drained with clear=1)

    @classmethod
    def from_row(cls, row: Any, process_id: str | None = None) -> QueueEvent:
        try:
            return cls(
                row_id=int(row["ID"]),
                timestamp=parse_timestamp(row["TIMESTAMP_X"]),
                event_name=str(row["EVENT_NAME"]).upper(),
                event_data=row.get("EVENT_DATA"),
                message_id=str(row.get("MESSAGE_ID") or ""),
                process_id=process_id or (row.get("PROCESS_ID") or None),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedResponse("event.offline.get", 200, f"queue row unreadable ({exc!r})",
                                    repr(row)[:200]) from None


def parse_timestamp(value: str) -> datetime:
    """ISO 8601 as Bitrix24 writes it (always with an offset); naive values are taken as UTC."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment
