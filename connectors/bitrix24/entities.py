"""The entity registry: each CRM entity kind described as data, and queue events mapped to kinds.

Adding an entity kind is a new `EntityKind` value, not a new code path: fetching, scanning, schema
mapping and planning all read these fields. Two value styles exist on the wire (facts §4.3-§4.4):
legacy ``crm.deal.list`` & co. answer UPPER_CASE keys with every value a string ("Y"/"N", "19.99"),
``crm.item.list`` answers camelCase keys with JSON numbers inside an ``items`` wrapper.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from connectors.bitrix24.client import Bitrix24Client


class Action(enum.StrEnum):
    ADD = "ADD"
    UPDATE = "UPDATE"
    DELETE = "DELETE"


@dataclass(frozen=True)
class EntityKind:
    key: str  # "deal", "contact", ..., "item:1038"
    table: str  # warehouse table: "deals", "items_1038"
    events: Mapping[str, Action]  # every EVENT_NAME recognised for this kind -> its meaning
    bind_events: tuple[str, ...]  # the subset bound offline: one row per change is enough
    list_method: str
    fields_method: str
    add_method: str
    update_method: str
    id_field: str  # "ID" (legacy) / "id" (item)
    modified_field: str  # "DATE_MODIFY" / "updatedTime" / "LAST_UPDATED"
    value_style: Literal["legacy", "item"]
    entity_type_id: int | None = None  # crm.item.* need it; also dispatches ONCRMDYNAMICITEM*
    select: tuple[str, ...] = ("*",)  # legacy masks: "*" + "UF_*"; multifields must be named (§4.3)
    title: str = ""
    # The Dagster asset that shows this kind's table(s), and what the asset is: every kind names one
    # (all smart-process types share one asset), so an asset list derived from the kinds covers them all.
    asset: str = ""
    description: str = ""


def _crm_events(entity: str) -> dict[str, Action]:
    return {f"ONCRM{entity}{action}": action for action in Action}


def _legacy(key: str, table: str, entity: str, entity_type_id: int | None, select: tuple[str, ...],
            description: str, *extra_events: tuple[str, Action]) -> EntityKind:
    api = f"crm.{key}"
    events = _crm_events(entity)
    return EntityKind(
        key=key, table=table, events={**events, **dict(extra_events)}, bind_events=tuple(events),
        list_method=f"{api}.list", fields_method=f"{api}.fields", add_method=f"{api}.add",
        update_method=f"{api}.update", id_field="ID", modified_field="DATE_MODIFY", value_style="legacy",
        entity_type_id=entity_type_id, select=select, title=table, asset=table, description=description,
    )


_WITH_MULTIFIELDS = ("*", "UF_*", "PHONE", "EMAIL", "WEB", "IM")

DEAL = _legacy("deal", "deals", "DEAL", 2, ("*", "UF_*"),
               "CRM deals: one current row per deal, deletes kept as tombstones.",
               # A funnel move is an update of the deal (facts §3); recognised if bound elsewhere,
               # not bound by us: its rows key on category and stage, so they would only duplicate.
               ("ONCRMDEALMOVETOCATEGORY", Action.UPDATE))
CONTACT = _legacy("contact", "contacts", "CONTACT", 3, _WITH_MULTIFIELDS,
                  "CRM contacts with their phones and e-mails.")
COMPANY = _legacy("company", "companies", "COMPANY", 4, _WITH_MULTIFIELDS,
                  "CRM companies (client and partner organisations).")
LEAD = _legacy("lead", "leads", "LEAD", 1, _WITH_MULTIFIELDS,
               "CRM leads: unqualified prospects before they become deals.")
ACTIVITY = EntityKind(
    key="activity", table="activities", events=_crm_events("ACTIVITY"),
    bind_events=tuple(_crm_events("ACTIVITY")),
    list_method="crm.activity.list", fields_method="crm.activity.fields", add_method="crm.activity.add",
    update_method="crm.activity.update", id_field="ID", modified_field="LAST_UPDATED",
    value_style="legacy", select=("*",), title="activities", asset="activities",
    description="CRM activities: calls, e-mails, meetings and tasks on CRM records.",
)

STANDARD_KINDS = (DEAL, CONTACT, COMPANY, LEAD, ACTIVITY)

# All smart-process types share these names and say which type in ENTITY_TYPE_ID; per-type
# variants end in "_<entityTypeId>" (facts §3).
_DYNAMIC_EVENT = re.compile(r"^ONCRMDYNAMICITEM(ADD|UPDATE|DELETE)(?:_(\d+))?$")


SMART_PROCESS_ASSET = "smart_process_items"
SMART_PROCESS_DESCRIPTION = "Items of every smart process (one table items_<entityTypeId> per type)."


def smart_process_kind(entity_type_id: int, title: str = "") -> EntityKind:
    """A smart-process type (entityTypeId >= 128, or 31 for new invoices) read through crm.item.*."""
    generic = {f"ONCRMDYNAMICITEM{action}": action for action in Action}
    per_type = {f"ONCRMDYNAMICITEM{action}_{entity_type_id}": action for action in Action}
    # Each change fires both spellings; binding both would queue every change twice. The generic
    # names always exist (the per-type ones must be checked with `events`, facts §3).
    return EntityKind(
        key=f"item:{entity_type_id}", table=f"items_{entity_type_id}", events={**generic, **per_type},
        bind_events=tuple(generic),
        list_method="crm.item.list", fields_method="crm.item.fields", add_method="crm.item.add",
        update_method="crm.item.update", id_field="id", modified_field="updatedTime",
        value_style="item", entity_type_id=entity_type_id, select=("*",), title=title,
        asset=SMART_PROCESS_ASSET, description=SMART_PROCESS_DESCRIPTION,
    )


def smart_process_type_of_table(table: str) -> int | None:
    """The entityTypeId whose table `smart_process_kind` names ``table`` (``items_<id>``), else None."""
    type_id = table.removeprefix("items_")
    return int(type_id) if table.startswith("items_") and type_id.isascii() and type_id.isdigit() else None


def kind_from_key(key: str) -> EntityKind:
    """The kind a `EntityKind.key` names: a standard kind, or the smart-process type ``item:<id>``.

    Raises KeyError for any other key. Lets a manifest that kept only the key recover the kind's
    table, asset and methods without asking the portal again."""
    prefix, _, type_id = key.partition(":")
    if prefix == "item" and type_id.isdigit():
        return smart_process_kind(int(type_id))
    return EntityRegistry.standard()[key]


def entity_assets() -> dict[str, str]:
    """Every entity asset, ``{asset name: description}``, in registry order: the standard kinds' and the
    one asset all smart-process types share (their types are only known per portal, at run time)."""
    kinds = (*STANDARD_KINDS, smart_process_kind(0))  # type 0: a stand-in carrying the shared names
    return {kind.asset: kind.description for kind in kinds}


@dataclass(frozen=True)
class EventTarget:
    """What one queue event refers to; ``kind`` is None when no registered kind handles it."""

    kind: EntityKind | None
    action: Action | None
    entity_id: int | None
    reason: str = ""  # why it is unknown


@dataclass(frozen=True)
class EntityRegistry:
    kinds: tuple[EntityKind, ...]
    _by_key: dict[str, EntityKind] = field(init=False, repr=False, compare=False)
    _by_event: dict[str, tuple[EntityKind, ...]] = field(init=False, repr=False, compare=False)
    _type_ids: frozenset[int] = field(init=False, repr=False, compare=False)  # the smart-process types listed

    def __post_init__(self) -> None:
        by_key: dict[str, EntityKind] = {}
        by_event: dict[str, list[EntityKind]] = {}
        for kind in self.kinds:
            if kind.key in by_key:
                raise ValueError(f"entity kind {kind.key!r} registered twice")
            by_key[kind.key] = kind
            for name in kind.events:
                by_event.setdefault(name, []).append(kind)
        object.__setattr__(self, "_by_key", by_key)
        object.__setattr__(self, "_by_event", {name: tuple(kinds) for name, kinds in by_event.items()})
        object.__setattr__(self, "_type_ids", frozenset(kind.entity_type_id for kind in self.kinds
                                                        if kind.value_style == "item" and kind.entity_type_id))

    @classmethod
    def standard(cls, extra: Iterable[EntityKind] = ()) -> EntityRegistry:
        return cls((*STANDARD_KINDS, *extra))

    @classmethod
    def discover(cls, client: Bitrix24Client, *, smart_processes: bool = True) -> EntityRegistry:
        """The standard kinds plus one kind per smart-process type the portal has (crm.type.list)."""
        if not smart_processes:
            return cls.standard()
        return cls.standard(smart_process_kind(entity_type_id, title)
                            for entity_type_id, title in _smart_process_types(client))

    def __getitem__(self, key: str) -> EntityKind:
        return self._by_key[key]

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __iter__(self) -> Iterator[EntityKind]:
        return iter(self.kinds)

    def __len__(self) -> int:
        return len(self.kinds)

    def subset(self, keys: Iterable[str]) -> EntityRegistry:
        return EntityRegistry(tuple(self[key] for key in keys))

    @property
    def event_names(self) -> tuple[str, ...]:
        return tuple(self._by_event)

    def resolve(self, event_name: str, event_data: object, *, types_fresh: bool = False) -> EventTarget:
        """Map one queue row (EVENT_NAME + EVENT_DATA) to its entity kind, action and id.

        An item event of a smart-process type the registry does not list resolves to that type's
        kind as a deletion when it is one, or when ``types_fresh`` says the registry's types were
        just asked (``crm.type.list``): the type is then deleted, which Bitrix24 allows only once
        its items are (``crm.type.delete``), so the item is gone too. Otherwise it is unknown, with
        a reason naming the type (the caller asks the types again)."""
        name = event_name.upper()
        fields = event_data.get("FIELDS") if isinstance(event_data, Mapping) else None
        if not isinstance(fields, Mapping):
            return EventTarget(None, None, None, f"{name}: EVENT_DATA has no FIELDS")
        entity_id = _positive_int(fields.get("ID"))
        candidates = self._by_event.get(name, ())
        kind = candidates[0] if candidates else None
        if kind is None or len(candidates) > 1 or kind.value_style == "item":
            kind = self._dynamic_kind(name, fields, candidates)
            if kind is None:
                retired = _retired_item(name, fields, entity_id, any_action=types_fresh, listed=self._type_ids)
                if retired is not None:
                    return retired
                reason = (f"smart-process type {fields.get('ENTITY_TYPE_ID')!r} is not registered"
                          if _DYNAMIC_EVENT.match(name) else "no registered entity kind")
                return EventTarget(None, None, entity_id, f"{name}: {reason}")
        if entity_id is None:
            return EventTarget(kind, None, None, f"{name}: FIELDS.ID is not a positive integer")
        return EventTarget(kind, kind.events[name], entity_id)

    @staticmethod
    def _dynamic_kind(name: str, fields: Mapping, candidates: tuple[EntityKind, ...]) -> EntityKind | None:
        match = _DYNAMIC_EVENT.match(name)
        type_id = _positive_int(fields.get("ENTITY_TYPE_ID"))
        if type_id is None and match and match.group(2):
            type_id = int(match.group(2))
        for kind in candidates:
            if kind.entity_type_id == type_id:
                return kind
        return None


def _retired_item(name: str, fields: Mapping, entity_id: int | None, *, any_action: bool,
                  listed: frozenset[int]) -> EventTarget | None:
    """An item event of a type the registry does not list, as the item's deletion; None when it is
    not an item event, names no id, no type or two (its name's suffix and ``ENTITY_TYPE_ID``
    disagree: which object it means is unknown), names a ``listed`` type, or is no deletion and
    ``any_action`` is off.

    Bitrix24 deletes a type only once it has no items (``crm.type.delete``), so a deleted type
    leaves its items' deletions in the queue, ahead of its ``ONCRMTYPEDELETE``. A deletion needs
    nothing read from the portal and still names its table (``items_<entityTypeId>``), whose rows
    must end tombstoned, not live for ever."""
    match = _DYNAMIC_EVENT.match(name)
    if match is None or entity_id is None or not (any_action or match.group(1) == "DELETE"):
        return None
    in_data = fields.get("ENTITY_TYPE_ID")
    from_data = _positive_int(in_data) if in_data is not None else None
    from_name = _positive_int(match.group(2)) if match.group(2) else None
    if in_data is not None and from_data is None:
        return None  # an unreadable type id
    if from_data is not None and from_name is not None and from_data != from_name:
        return None  # two types named
    type_id = from_data if from_data is not None else from_name
    if type_id is None or type_id in listed:
        return None
    return EventTarget(smart_process_kind(type_id), Action.DELETE, entity_id)


def _smart_process_types(client: Bitrix24Client) -> list[tuple[int, str]]:
    from connectors.bitrix24.lookups import types_of  # lookups builds on this module

    types: list[tuple[int, str]] = []
    start: int | None = 0
    while start is not None:
        response = client.call("crm.type.list", {"start": start})
        types.extend((type_id, title) for type_id, title in types_of(response.result))
        start = response.next
    return types


_INT64_MAX = 2**63 - 1  # ids are BIGINT in the warehouse; a larger one names no object


def _positive_int(value: object) -> int | None:
    """A positive id from a queue row's JSON: an integer or a string of ASCII digits (Bitrix24 sends
    ids as strings, facts §3), at most int64; None for anything else (a bool, a fraction, "1e3",
    a number beyond int64)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    else:
        return None
    return number if 0 < number <= _INT64_MAX else None
