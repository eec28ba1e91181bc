"""Planning a sync step: queue events in, per entity kind the ids to fetch and to tombstone out.

Pure: no HTTP, no clock. The queue holds one row per (event name, object) with the time of the
last occurrence (facts §2.11), so one object can have an ADD, an UPDATE and a DELETE row at once;
the latest (by TIMESTAMP_X, then row ID) decides. Events carry ids only (facts §3): whatever is not
deleted is re-read. Events no registered kind understands are returned in ``unknown`` for the
caller to report, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from connectors.bitrix24.entities import Action, EntityKind, EntityRegistry
from connectors.bitrix24.queue_rows import QueueEvent


@dataclass(frozen=True)
class KindPlan:
    kind: EntityKind
    fetch_ids: tuple[int, ...]  # ascending
    tombstone_ids: tuple[int, ...]  # ascending
    changed_at: dict[int, datetime]  # latest TIMESTAMP_X per object id (UTC), fetched or tombstoned


@dataclass(frozen=True)
class UnknownEvent:
    event: QueueEvent
    reason: str


@dataclass(frozen=True)
class ChangePlan:
    kinds: dict[str, KindPlan] = field(default_factory=dict)  # by EntityKind.key
    unknown: tuple[UnknownEvent, ...] = ()
    events: int = 0  # queue events planned (known and unknown)

    @property
    def fetch_count(self) -> int:
        return sum(len(plan.fetch_ids) for plan in self.kinds.values())

    @property
    def tombstone_count(self) -> int:
        return sum(len(plan.tombstone_ids) for plan in self.kinds.values())


def plan_changes(events: Iterable[QueueEvent], registry: EntityRegistry) -> ChangePlan:
    ordered = sorted(events, key=lambda event: (event.timestamp.astimezone(UTC), event.row_id))
    latest: dict[tuple[str, int], tuple[EntityKind, Action, datetime]] = {}
    unknown: list[UnknownEvent] = []
    for event in ordered:
        target = registry.resolve(event.event_name, event.event_data)
        if target.kind is None or target.action is None or target.entity_id is None:
            unknown.append(UnknownEvent(event, target.reason))
            continue
        latest[(target.kind.key, target.entity_id)] = (
            target.kind, target.action, event.timestamp.astimezone(UTC))

    fetch: dict[str, list[int]] = {}
    tombstone: dict[str, list[int]] = {}
    changed_at: dict[str, dict[int, datetime]] = {}
    kinds: dict[str, EntityKind] = {}
    for (key, entity_id), (kind, action, moment) in latest.items():
        kinds[key] = kind
        lane = tombstone if action is Action.DELETE else fetch
        lane.setdefault(key, []).append(entity_id)
        changed_at.setdefault(key, {})[entity_id] = moment

    plans = {
        key: KindPlan(kind, tuple(sorted(fetch.get(key, ()))), tuple(sorted(tombstone.get(key, ()))),
                      changed_at[key])
        for key, kind in kinds.items()
    }
    return ChangePlan(plans, tuple(unknown), len(ordered))
