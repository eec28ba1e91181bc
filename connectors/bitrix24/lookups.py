"""Slowly changing look-ups of one portal (plan features, smart-process types, field descriptions),
asked in one ``batch`` and kept in a cache between runs.

Every sync step needs them, and asking each time costs a request per kind and run (issue 13: a
2,500-change run cost 8 requests instead of 3). They change rarely, and each change is visible:

* a field the cache does not know appears in a list answer (a user field was added),
* a queue row names a smart-process type the cache does not know, or is a user-field or type event
  (``ONCRM*USERFIELD*``, ``ONCRMTYPEADD/UPDATE/DELETE``; facts §3, §4.8),
* the plan changes (feature.get, facts §2.15): picked up by the age limit.

So they are cached per portal with the time they were fetched and asked again on any of those, or
once older than `MAX_AGE`. Commands for everything missing go out in one ``batch`` (facts §5).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Protocol

from connectors.bitrix24.batch import Command
from connectors.bitrix24.entities import EntityKind
from connectors.bitrix24.errors import MalformedResponse

MAX_AGE = timedelta(hours=1)  # a plan change or a missed field event is picked up within the hour

FEATURES = "features"
TYPES = "types"
# Which reference-data events the portal lists and we keep bound offline (checked with the other
# look-ups, so a portal bound before these events were, or whose handlers an app update wiped
# (facts §2.3), is bound again within `MAX_AGE`).
REFERENCE_BINDINGS = "reference_bindings"

# Events that say the field descriptions or the smart-process types changed (facts §3 "Others in
# `events` list", §4.8). Only seen if bound; a run that sees one drops what they invalidate.
_USERFIELD_EVENT = re.compile(r"^ONCRM\w*USERFIELD\w*$")
_TYPE_EVENT = re.compile(r"^ONCRMTYPE(ADD|UPDATE|DELETE)$")


def fields_key(kind: EntityKind) -> str:
    return f"fields:{kind.key}"


class LookupCache(Protocol):
    """A key -> (JSON value, fetched at) store for one portal (`connectors.state` keeps it)."""

    def get(self, key: str) -> tuple[Any, datetime] | None: ...

    def put(self, key: str, value: Any) -> None: ...

    def forget(self, keys: Iterable[str] | None = None) -> None: ...


class MemoryCache:
    """A process-local `LookupCache`, for a sync without a state store (tests, the CLI).

    Shared by every instance with the same ``scope`` (the portal's endpoint), so consecutive runs in
    one process do not ask again."""

    _values: ClassVar[dict[tuple[str, str], tuple[Any, datetime]]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, scope: str | Callable[[], str]) -> None:
        self._scope = scope  # a callable is asked at first use (e.g. the endpoint of a token)

    @property
    def scope(self) -> str:
        if callable(self._scope):
            self._scope = self._scope()
        return self._scope

    def get(self, key: str) -> tuple[Any, datetime] | None:
        with self._lock:
            return self._values.get((self.scope, key))

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._values[(self.scope, key)] = (value, datetime.now(UTC))

    @classmethod
    def forget_all(cls) -> None:
        """Drop what this process cached for every portal (a test starting from a clean process)."""
        with cls._lock:
            cls._values.clear()

    def forget(self, keys: Iterable[str] | None = None) -> None:
        dropped = None if keys is None else set(keys)
        with self._lock:
            for scope, key in list(self._values):
                if scope == self.scope and (dropped is None or key in dropped):
                    del self._values[(scope, key)]


def fresh(cache: LookupCache, key: str, max_age: timedelta = MAX_AGE) -> Any | None:
    """The cached value of ``key`` if younger than ``max_age``, else None."""
    entry = cache.get(key)
    if entry is None:
        return None
    value, fetched_at = entry
    return value if datetime.now(UTC) - fetched_at < max_age else None


def fields_command(kind: EntityKind) -> Command:
    """``crm.<entity>.fields`` (legacy) or ``crm.item.fields entityTypeId=N`` (facts §4.4-§4.5)."""
    return Command(kind.fields_method, {"entityTypeId": kind.entity_type_id} if kind.value_style == "item" else {})


def fields_of(kind: EntityKind, result: Any) -> dict[str, dict]:
    """The field descriptions in a ``*.fields`` answer (crm.item.fields wraps them in ``fields``).

    Raises `MalformedResponse` if they are not an object."""
    fields = result.get("fields") if kind.value_style == "item" and isinstance(result, Mapping) else result
    if not isinstance(fields, Mapping):
        raise MalformedResponse(kind.fields_method, 200, "fields is not an object", repr(result)[:200])
    return {str(name): dict(description) if isinstance(description, Mapping) else {}
            for name, description in fields.items()}


def types_command() -> Command:
    """The first page of ``crm.type.list`` (50 types; more are paged with ``start``)."""
    return Command("crm.type.list", {"start": 0})


def types_of(result: Any) -> list[list]:
    """``[[entityTypeId, title], ...]`` from a ``crm.type.list`` answer (``{"types": [...]}``).

    Raises `MalformedResponse` for an answer without that array or with a row whose ``entityTypeId``
    is no positive integer (or string of digits): a type skipped would look deleted, and its rows be
    tombstoned."""
    rows = result.get("types") if isinstance(result, Mapping) else result
    if not isinstance(rows, list):
        raise MalformedResponse("crm.type.list", 200, "types is not an array", repr(result)[:200])
    types = []
    for row in rows:
        type_id = row.get("entityTypeId") if isinstance(row, Mapping) else None
        number = (type_id if isinstance(type_id, int) and not isinstance(type_id, bool)
                  else int(type_id) if isinstance(type_id, str) and type_id.isascii() and type_id.isdigit() else 0)
        if number <= 0:
            raise MalformedResponse("crm.type.list", 200, "a type without a positive entityTypeId", repr(row)[:200])
        types.append([number, str(row.get("title") or "")])
    return types


def invalidated_by(event_names: Iterable[str]) -> set[str]:
    """What queue rows with these names make stale: `TYPES` and/or ``"fields:*"`` (every kind's)."""
    stale: set[str] = set()
    for name in event_names:
        upper = name.upper()
        if _TYPE_EVENT.match(upper):
            stale.update((TYPES, "fields:*"))
        elif _USERFIELD_EVENT.match(upper):
            stale.add("fields:*")
    return stale
