"""Everything one portal's sync needs, in one place: its client, queue, entity registry, warehouse,
and the portal's look-ups (types, fields, features) cached between runs."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from connectors.bitrix24 import Bitrix24Client, EntityKind, EntityRegistry, OAuthApp, OfflineQueue, RateLimits, Throttle
from connectors.bitrix24.batch import BatchResult, Command
from connectors.bitrix24.entities import STANDARD_KINDS, smart_process_kind
from connectors.bitrix24.errors import ApiError, MalformedResponse
from connectors.bitrix24.lookups import (
    FEATURES,
    REFERENCE_BINDINGS,
    TYPES,
    LookupCache,
    MemoryCache,
    fields_command,
    fields_key,
    fields_of,
    fresh,
    types_command,
    types_of,
)
from connectors.bitrix24.offline import feature_commands, features_from
from connectors.bitrix24.redaction import redact
from connectors.bitrix24.reference import REFERENCE_EVENTS
from connectors.state import StateStore
from connectors.warehouse import Warehouse

log = logging.getLogger(__name__)

# Our own key for auth_connector: a separate queue for us, and our write-backs never come back
# as events (facts §2.12).
DEFAULT_CONNECTOR = "b24wh"


def portal_client(app: OAuthApp, state: StateStore, portal: str, limits: RateLimits) -> Bitrix24Client:
    """A client of ``portal`` with its tokens in ``state`` and its requests taken from the portal's one
    bucket there, shared by every client in any process (sensor peeks, runs, reconcile, the drain,
    write-back, the command line): the limit is the portal's, not the client's (facts §6.1)."""
    return Bitrix24Client(app.session(portal, state.tokens), throttle=Throttle(limits, shared=state, portal=portal))


class StoreCache:
    """The state store's portal cache as a `LookupCache` (shared by every process of the portal)."""

    def __init__(self, store: StateStore, portal: str) -> None:
        self.store, self.portal = store, portal

    def get(self, key: str) -> tuple[Any, datetime] | None:
        return self.store.cached(self.portal, key)

    def put(self, key: str, value: Any) -> None:
        self.store.cache(self.portal, key, value)

    def forget(self, keys: Iterable[str] | None = None) -> None:
        self.store.forget_cached(self.portal, keys)


@dataclass
class PortalSync:
    portal: str  # the hostname-like portal key (also the Dagster partition key)
    client: Bitrix24Client
    warehouse: Warehouse
    staging_dir: Path  # this run's hand-over directory: <root>/<portal>/<run> (connectors.sync.staging)
    connector: str = DEFAULT_CONNECTOR
    # Queue rows per run (`steps.run_rounds` takes them ROUND_EVENTS at a time); a bigger backlog is
    # worked off by the following runs.
    max_events: int = 25_000
    # Sibling run directories still needed (a run retried from failure reads its parent's files).
    keep_staging: tuple[str, ...] = ()
    # Where look-ups are cached between runs; without one they are kept in this process only.
    state: StateStore | None = None
    queue: OfflineQueue = field(init=False)
    cache: LookupCache = field(init=False)
    _registry: EntityRegistry | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.cache = (StoreCache(self.state, self.portal) if self.state is not None
                      else MemoryCache(lambda: self.client.credentials.grant().endpoint))
        self.queue = OfflineQueue(self.client, self.connector, self.cache)
        self.staging_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    @property
    def run_id(self) -> str:
        """This portal's part of the run, ``<run>:<portal>`` (``<run>``: the staging directory's name,
        the Dagster run id in a Dagster run): unique per portal also when one run drains several."""
        return f"{self.staging_dir.name}:{self.portal}"

    @property
    def registry(self) -> EntityRegistry:
        """The standard kinds plus this portal's smart-process types (cached crm.type.list)."""
        if self._registry is None:
            types = fresh(self.cache, TYPES)
            if types is None:
                self.refresh()
                types = fresh(self.cache, TYPES) or []
            self._registry = EntityRegistry.standard(smart_process_kind(int(type_id), str(title))
                                                     for type_id, title in types)
        return self._registry

    def cached_kinds(self) -> list[EntityKind] | None:
        """The registry's kinds if the smart-process types are cached (younger than `MAX_AGE`), else
        None; never asks the portal (a full resync asks in its first scan request instead)."""
        if self._registry is None and fresh(self.cache, TYPES) is None:
            return None
        return list(self.registry)

    def fields(self, kind: EntityKind) -> dict[str, dict]:
        """``kind``'s field descriptions (cached ``*.fields``), asked with everything else missing."""
        found = fresh(self.cache, fields_key(kind))
        if found is None:
            self.refresh([kind])
            found = fresh(self.cache, fields_key(kind))
        if found is None:
            raise LookupError(f"{kind.fields_method} answered nothing for {kind.key}")
        return found

    def forget(self, keys: Iterable[str]) -> None:
        """Drop cached look-ups (``"fields:*"`` means every kind's fields) so they are asked again."""
        wanted = set(keys)
        if "fields:*" in wanted:
            wanted.discard("fields:*")
            wanted.update(fields_key(kind) for kind in self._known_kinds())
        self.cache.forget(wanted)
        if "types" in wanted:
            self._registry = None

    def ask_types(self) -> frozenset[int]:
        """Ask ``crm.type.list`` now (every page), cache the answer and return the listed
        entityTypeIds. Raises the portal's error (the cached types then stay as they were)."""
        commands = {"lookup_types": types_command()}
        self.take_lookups(commands, self.client.batch_all(commands))
        return frozenset(int(type_id) for type_id, _title in fresh(self.cache, TYPES) or [])

    def refresh(self, kinds: Iterable[EntityKind] = ()) -> None:
        """Ask, in one ``batch``, for every look-up that is missing or older than its age limit.

        The features, the smart-process types and the fields of every known kind (and of ``kinds``)
        travel together, so a cold start costs one request. The fields of smart-process types seen
        for the first time are asked when needed (`lookup_commands` packs them into a request that
        goes out anyway). Raises the portal's error for a look-up that failed.
        """
        commands = self.lookup_commands((*self._known_kinds(), *kinds), everything=True)
        if commands:
            self.take_lookups(commands, self.client.batch_all(commands))

    def lookup_commands(self, kinds: Iterable[EntityKind], *, everything: bool = False,
                        events: bool = True) -> dict[str, Command]:
        """Commands for the fields of ``kinds`` that are missing or stale (with ``everything``, also
        the features, the types and, unless ``events`` is False, which reference-data events are
        bound), keyed ``lookup_*``; give their outcome to `take_lookups`."""
        commands: dict[str, Command] = {}
        if everything and fresh(self.cache, FEATURES) is None:
            commands.update({f"lookup_feature_{code}": command for code, command in feature_commands().items()})
        if everything and fresh(self.cache, TYPES) is None:
            commands["lookup_types"] = types_command()
        if everything and events and fresh(self.cache, REFERENCE_BINDINGS) is None:
            # What the portal can bind (`events`) and what we have bound (`event.get`), facts §2.5-§2.6.
            commands["lookup_events"] = Command("events", {})
            commands["lookup_handlers"] = Command("event.get", {})
        for kind in {kind.key: kind for kind in kinds}.values():
            if fresh(self.cache, fields_key(kind)) is None:
                commands[f"lookup_fields_{kind.key.replace(':', '_')}"] = fields_command(kind)
        return commands

    def take_lookups(self, commands: Mapping[str, Command], outcome: BatchResult) -> None:
        """Cache what the `lookup_commands` in ``outcome`` answered."""
        kinds = {f"lookup_fields_{kind.key.replace(':', '_')}": kind
                 for kind in self._known_kinds() + self._new_kinds(commands)}
        features = {key.removeprefix("lookup_feature_"): key for key in commands if key.startswith("lookup_feature_")}
        if features:
            renamed = BatchResult({code: outcome.results.get(key) for code, key in features.items()},
                                  {code: outcome.errors[key] for code, key in features.items()
                                   if key in outcome.errors}, {}, {}, {})
            found = features_from(renamed)
            self.cache.put(FEATURES, {"offline_extended": found.offline_extended,
                                      "auth_connector": found.auth_connector})
            self.queue.remember(found)
        for key in commands:
            kind = kinds.get(key)
            if kind is None:
                continue
            if key in outcome.errors and kind.value_style == "item":
                # Likely a smart-process type deleted since the last look-up: ask for the types again.
                log.warning("portal %s: %s fields: %s", self.portal, kind.key, outcome.errors[key])
                if "lookup_types" not in commands:
                    self.cache.forget([TYPES])
                continue
            self.cache.put(fields_key(kind), fields_of(kind, outcome.result(key)))
        if "lookup_types" in commands:
            types = types_of(outcome.result("lookup_types"))
            start, total = outcome.nexts.get("lookup_types"), outcome.totals.get("lookup_types")
            while start is not None:  # more than 50 smart-process types: page on (rare)
                page = self.client.call("crm.type.list", {"start": start})
                types.extend(types_of(page.result))
                start = page.next
            if total is not None and len({type_id for type_id, _title in types}) != int(total):
                # A type missing from the list would look deleted, and its rows be tombstoned.
                raise MalformedResponse("crm.type.list", 200, f"{len(types)} types listed of a total of {total}",
                                        "")
            self.cache.put(TYPES, types)
            self._registry = None
        if "lookup_events" in commands:
            self.cache.put(REFERENCE_BINDINGS, self._reference_bindings(outcome))

    def _reference_bindings(self, outcome: BatchResult) -> dict[str, Any]:
        """The reference-data events the portal lists in ``events`` and which of them ``event.get``
        does not show bound offline with our connector key (``missing``: `bind_reference_events`
        binds them). A refusal (no admin rights, a webhook) is logged and cached as nothing to bind,
        so it is asked again after `MAX_AGE`, not on every run; the schedule refreshes meanwhile."""
        refused = [outcome.errors[key] for key in ("lookup_events", "lookup_handlers") if key in outcome.errors]
        listed = outcome.results.get("lookup_events")
        if refused or not isinstance(listed, list):
            reason = redact(str(refused[0])) if refused else "no events list"
            log.warning("portal %s: cannot tell which reference-data events to bind (%s); the schedule "
                        "refreshes reference data meanwhile", self.portal, reason)
            return {"listed": [], "missing": [], "error": reason}
        available = {str(name).upper() for name in listed}
        wanted = [name for name in REFERENCE_EVENTS if name in available]
        present = self.queue.bound_offline(outcome.results.get("lookup_handlers"))
        return {"listed": wanted, "missing": [name for name in wanted if name not in present]}

    def reference_bind_commands(self, connector: str | None = None) -> dict[str, Command]:
        """``event.bind`` commands for the reference-data events the portal lists and we have not
        bound (from the cached look-up; empty when nothing is missing), or for every one of
        `REFERENCE_EVENTS` when that look-up is not cached: binds are idempotent and an event the
        portal does not list is refused on its own (facts §2.3), so sending them blind costs no
        request where reading ``events`` first would. A full resync sends them in its first scan
        request, other runs with `bind_reference_events`. ``connector``: as for `bind_event_commands`."""
        bindings = fresh(self.cache, REFERENCE_BINDINGS)
        names = REFERENCE_EVENTS if bindings is None else bindings.get("missing", [])
        return self.queue.bind_event_commands(names, connector=connector)

    def reference_bound(self, commands: Mapping[str, Command], outcome: BatchResult) -> None:
        """Take what the `reference_bind_commands` in ``outcome`` did: nothing is missing any more,
        and what was bound (or was already) is listed. An event the portal does not list
        (``ERROR_EVENT_NOT_FOUND``, e.g. ``ONUSERADD`` without the ``user`` scope) is not listed.
        Raises the portal's refusal of a bind (other than "already bound" and "not found")."""
        unlisted = {key for key, error in outcome.errors.items() if key in commands
                    and error.code == "ERROR_EVENT_NOT_FOUND"}
        result = self.queue.bound_from({key: command for key, command in commands.items()
                                        if key not in unlisted}, outcome)
        bindings = (self.cache.get(REFERENCE_BINDINGS) or ({}, None))[0]
        listed = {*bindings.get("listed", []), *result.bound, *result.already_bound}
        self.cache.put(REFERENCE_BINDINGS, {**bindings, "listed": [name for name in REFERENCE_EVENTS if name in listed],
                                            "missing": []})
        log.info("portal %s: bound %d reference-data events offline (%d already bound, %d not listed)",
                 self.portal, len(result.bound), len(result.already_bound), len(unlisted))

    def bind_reference_events(self) -> None:
        """Bind the missing reference-data events in one ``batch`` (none when nothing is missing: a
        portal bound before these events were, or whose handlers an app update wiped, facts §2.3).
        A refusal is logged and left for the next look-up; the schedule refreshes meanwhile."""
        commands = self.reference_bind_commands()
        if not commands:
            return
        try:
            self.reference_bound(commands, self.client.batch_all(commands))
        except ApiError as error:
            log.warning("portal %s: binding reference-data events was refused (%s); the schedule "
                        "refreshes reference data meanwhile", self.portal, redact(str(error)))

    @staticmethod
    def _new_kinds(commands: Mapping[str, Command]) -> list[EntityKind]:
        return [smart_process_kind(int(command.params["entityTypeId"])) for command in commands.values()
                if command.method == "crm.item.fields"]

    def _known_kinds(self) -> list[EntityKind]:
        types = (self.cache.get(TYPES) or ([], None))[0]
        return [*STANDARD_KINDS, *(smart_process_kind(int(type_id), str(title)) for type_id, title in types)]
