"""Event handlers of a portal (``portal.events``): binding, and what happens when the CRM changes.

`EventHub.emit` is called by every CRM write. For each handler bound to the event it either writes
an offline queue row (one queue per application and connector, with loop suppression for the app's
own writes, facts §2.12) or POSTs the event to an online handler URL (§3). After writing rows it
notifies the application's ``ONOFFLINEEVENT`` handlers, at most once per ``minTimeout`` (§2.13).

Also here: the ``event.bind``, ``event.unbind``, ``event.get`` and ``events`` methods (§2.3-§2.6).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from emulator.crm.clock import PortalClock
from emulator.crm.origin import Origin
from emulator.crm.phpish import intval, upper_keys
from emulator.errors import AccessDenied, ArgumentError, RestError
from emulator.offline import OfflineQueue
from emulator.registry import CallContext, rest_method

if TYPE_CHECKING:
    from emulator.portal import Portal

__all__ = ["EventHub", "Handler", "Origin", "attach", "message_id"]

ONOFFLINEEVENT = "ONOFFLINEEVENT"
DEFAULT_MIN_TIMEOUT = 1  # seconds, EventOfflineTable::OFFLINE_EVENT_DEFAULT_TIMEOUT

# Events of the global scope, available to every application.
BASIC_EVENTS = ("ONAPPINSTALL", "ONAPPUNINSTALL", "ONAPPUPDATE", "ONAPPTEST", ONOFFLINEEVENT)
# Events of the ``user`` scope the emulator fires (`Portal.add_user`).
USER_EVENTS = ("ONUSERADD",)
# Options an event accepts in event.bind, with their PHP type; everything else is dropped.
ALLOWED_OPTIONS: dict[str, dict[str, type]] = {ONOFFLINEEVENT: {"minTimeout": int}}
# Events that cannot be bound offline ("disableOffline" in the event description).
ONLINE_ONLY = frozenset({ONOFFLINEEVENT})

Post = Callable[[str, dict[str, Any]], None]
EventAuth = Callable[["Portal", str], dict[str, Any]]


@dataclass
class Handler:
    """A row of ``b_rest_event``."""

    id: int
    client_id: str
    event: str
    handler_url: str  # '' for offline handlers
    user_id: int  # AUTH_TYPE; 0 = the user who caused the event
    connector: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def offline(self) -> bool:
        return self.handler_url == ""

    @property
    def identity(self) -> tuple[str, str, str, str, int]:
        """The unique key of the handler table: app, event, handler, connector, user."""
        return self.client_id, self.event, self.handler_url, self.connector, self.user_id


def message_id(event_name: str, data: Any) -> str:
    """``md5(EVENT_NAME|json_encode(EVENT_DATA))``: stable per event name and object (facts §2.11).

    orjson writes the same compact form as PHP for the integer-only payloads of CRM events."""
    return hashlib.md5(event_name.encode() + b"|" + orjson.dumps(data)).hexdigest()


def _post_form(url: str, payload: dict[str, Any]) -> None:
    from emulator.outbound import post_form

    post_form(url, payload)


def _event_auth(portal: Portal, client_id: str) -> dict[str, Any]:
    from emulator.auth import event_auth

    return event_auth(portal, client_id)


class EventHub:
    def __init__(self, portal: Portal, *, post: Post | None = None, event_auth: EventAuth | None = None,
                 clock: PortalClock | None = None) -> None:
        self.portal = portal
        crm_clock = getattr(portal.crm, "clock", None)
        self.clock: PortalClock = clock or crm_clock or PortalClock()
        self._post = post or _post_form
        self._event_auth = event_auth or _event_auth
        self.handlers: dict[int, Handler] = {}
        self._by_event: dict[str, list[Handler]] = {}
        self._queues: dict[tuple[str, str], OfflineQueue] = {}
        self._last_handler_id = 0
        self._last_row_id = 0
        self._last_notified: dict[int, float] = {}  # handler id -> monotonic time of the last ONOFFLINEEVENT
        self._notify_lock = threading.Lock()

    # --- handlers -------------------------------------------------------------------------------------

    def available_events(self, scopes: frozenset[str] | set[str] | None) -> list[str]:
        """Event names an app with `scopes` may bind; None means every scope (``events FULL=1``)."""
        names = list(BASIC_EVENTS)
        if scopes is None or "crm" in scopes:
            crm = self.portal.crm
            if crm is not None:
                names.extend(crm.event_names())
        if scopes is None or "user" in scopes:
            names.extend(USER_EVENTS)
        return names

    def bind(self, client_id: str, event: str, handler_url: str, user_id: int, connector: str,
             options: dict[str, Any]) -> Handler:
        with self.portal.lock:
            candidate = Handler(0, client_id, event, handler_url, user_id, connector, options)
            if any(existing.identity == candidate.identity for existing in self.handlers.values()):
                raise RestError("Unable to set event handler: Handler already binded", code="ERROR_CORE")
            self._last_handler_id += 1
            candidate.id = self._last_handler_id
            self.handlers[candidate.id] = candidate
            self._by_event.setdefault(event, []).append(candidate)
            return candidate

    def unbind(self, match: Callable[[Handler], bool]) -> int:
        with self.portal.lock:
            doomed = [handler for handler in self.handlers.values() if match(handler)]
            for handler in doomed:
                del self.handlers[handler.id]
                self._by_event[handler.event].remove(handler)
                self._last_notified.pop(handler.id, None)
            return len(doomed)

    def handlers_of(self, client_id: str) -> list[Handler]:
        return [handler for handler in self.handlers.values() if handler.client_id == client_id]

    def forget_app(self, client_id: str) -> None:
        """Uninstall: Bitrix wipes the app's handlers (facts §2.3) and its queue goes with it."""
        with self.portal.lock:
            self.unbind(lambda handler: handler.client_id == client_id)
            for key in [key for key in self._queues if key[0] == client_id]:
                del self._queues[key]

    # --- queues -----------------------------------------------------------------------------------------

    def queue(self, client_id: str, connector: str, *, create: bool = True) -> OfflineQueue:
        """The queue of an app and connector; reads of a queue never written get an empty, unsaved one."""
        key = (client_id, connector)
        queue = self._queues.get(key)
        if queue is None:
            queue = OfflineQueue(client_id, connector, self.clock)
            if create:
                self._queues[key] = queue
        return queue

    def _new_row_id(self) -> int:
        self._last_row_id += 1
        return self._last_row_id

    def queue_rows(self) -> list[dict[str, Any]]:
        """Every queue row with all its columns (control API / tests)."""
        with self.portal.lock:
            rows = [
                {**queue.listed(row), "APP_ID": queue.client_id, "CONNECTOR_ID": queue.connector}
                for queue in self._queues.values()
                for row in queue.all_rows()
            ]
        rows.sort(key=lambda row: int(row["ID"]))
        return rows

    # --- emitting ---------------------------------------------------------------------------------------

    def emit(self, event_name: str, data: dict[str, Any], origin: Origin) -> None:
        handlers = self._by_event.get(event_name)
        if not handlers:
            return
        installed = self.portal.installations
        now = self.clock.now()
        key: str | None = None
        apps_with_new_rows: list[str] = []
        for handler in list(handlers):
            # No events before installation / after removal of the app (facts §2.2).
            if handler.client_id not in installed:
                continue
            if not handler.offline:
                self._post(handler.handler_url, {
                    "event": event_name,
                    "event_handler_id": handler.id,
                    "data": data,
                    "ts": str(now),
                    "auth": self._event_auth(self.portal, handler.client_id),
                })
                continue
            # Loop suppression: the app's own REST writes with the handler's connector (both may be
            # empty) are not queued for that handler (ProviderOffline::send, facts §2.12).
            if origin.client_id == handler.client_id and origin.auth_connector == handler.connector:
                continue
            if key is None:
                key = message_id(event_name, data)
            additional = {"user_id": str(origin.user_id)}
            self.queue(handler.client_id, handler.connector).record(
                self._new_row_id, event_name, data, additional, key, now)
            if handler.client_id not in apps_with_new_rows:
                apps_with_new_rows.append(handler.client_id)
        for client_id in apps_with_new_rows:
            self._notify_offline(client_id)

    def _notify_offline(self, client_id: str) -> None:
        for handler in self._by_event.get(ONOFFLINEEVENT, ()):
            if handler.client_id != client_id or handler.offline:
                continue
            if not self._send_time_reached(handler):
                continue
            self._post(handler.handler_url, {
                "event": ONOFFLINEEVENT,
                "data": [],
                "ts": str(self.clock.now()),
                "auth": self._event_auth(self.portal, client_id),
            })

    def _send_time_reached(self, handler: Handler) -> bool:
        """``checkSendTime``: after a notification the handler is quiet for ``minTimeout`` seconds.

        With ``minTimeout`` 0 Bitrix sends once per request; each write counts as its own request here."""
        timeout = handler.options.get("minTimeout", DEFAULT_MIN_TIMEOUT)
        if timeout <= 0:
            return True
        with self._notify_lock:
            now = time.monotonic()
            last = self._last_notified.get(handler.id)
            if last is not None and now - last < timeout:
                return False
            self._last_notified[handler.id] = now
            return True


def attach(portal: Portal, *, post: Post | None = None, event_auth: EventAuth | None = None) -> EventHub:
    """Give `portal` its event handlers and offline queues (call after `emulator.crm.attach`)."""
    hub = EventHub(portal, post=post, event_auth=event_auth)
    portal.events = hub
    return hub


# --- REST methods ------------------------------------------------------------------------------------------

def _hub(ctx: CallContext) -> EventHub:
    return ctx.portal.events


def _event_type(query: dict[str, Any]) -> str:
    event_type = str(query.get("EVENT_TYPE") or "").lower()
    if event_type == "":
        return "online"
    if event_type not in ("online", "offline"):
        raise ArgumentError("Value must be one of {online|offline}", "EVENT_TYPE")
    return event_type


def _kept_options(event: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        return {}
    kept: dict[str, Any] = {}
    for name, kind in ALLOWED_OPTIONS.get(event, {}).items():
        if name in raw and kind is int:
            kept[name] = intval(raw[name])
    return kept


@rest_method("event.bind", scope="basic", app_only=True)
def event_bind(ctx: CallContext, params: dict) -> bool:
    query = upper_keys(params)
    caller = ctx.caller
    event = str(query.get("EVENT") or "").upper()
    user_id = intval(query.get("AUTH_TYPE"))
    handler_url = str(query.get("HANDLER") or "")
    if user_id > 0:
        if not caller.is_admin and user_id != caller.user_id:
            raise AccessDenied("Access denied! Event binding with AUTH_TYPE requires administrator "
                               "access rights")
    elif not caller.is_admin:
        user_id = caller.user_id
    if event == "":
        raise ArgumentError("Argument 'EVENT' is null or empty", "EVENT")
    event_type = _event_type(query)
    if event_type == "offline":
        if not caller.is_admin:
            raise AccessDenied("Access denied! Offline events binding requires administrator access rights")
        handler_url, user_id = "", 0
    elif handler_url == "":
        raise ArgumentError("Argument 'HANDLER' is null or empty", "HANDLER")
    hub = _hub(ctx)
    if event not in hub.available_events(caller.scopes):
        raise RestError("Event not found", code="ERROR_EVENT_NOT_FOUND")
    if handler_url == "" and event in ONLINE_ONLY:
        raise RestError("Offline event cannot be registered for this event.", code="ERROR_ARGUMENT")
    hub.bind(caller.client_id or "", event, handler_url, user_id, caller.auth_connector,
             _kept_options(event, query.get("OPTIONS")))
    return True


@rest_method("event.unbind", scope="basic", app_only=True)
def event_unbind(ctx: CallContext, params: dict) -> dict[str, int]:
    query = upper_keys(params)
    caller = ctx.caller
    event = str(query.get("EVENT") or "").upper()
    handler_url = str(query.get("HANDLER") or "")
    if event == "":
        raise ArgumentError("Argument 'EVENT' is null or empty", "EVENT")
    event_type = _event_type(query)
    if event_type == "offline":
        if not caller.is_admin:
            raise AccessDenied("Access denied! Offline events unbinding requires administrator access rights")
        handler_url = ""
    elif handler_url == "":
        raise ArgumentError("Argument 'HANDLER' is null or empty", "HANDLER")
    client_id = caller.client_id or ""
    connector: str | None = None
    user_id: int | None = None
    if event_type == "offline":
        # Offline handlers are matched by the connector of this very call (facts §2.4).
        connector = caller.auth_connector
    elif "AUTH_TYPE" in query:
        user_id = intval(query["AUTH_TYPE"])
        if not caller.is_admin and user_id != caller.user_id:
            raise AccessDenied("Access denied! Event unbinding with AUTH_TYPE requires administrator "
                               "access rights")
    elif not caller.is_admin:
        user_id = caller.user_id

    def matches(handler: Handler) -> bool:
        return (handler.client_id == client_id and handler.event == event
                and handler.handler_url == handler_url
                and (connector is None or handler.connector == connector)
                and (user_id is None or handler.user_id == user_id))

    return {"count": _hub(ctx).unbind(matches)}


@rest_method("event.get", scope="basic", app_only=True)
def event_get(ctx: CallContext, params: dict) -> list[dict[str, Any]]:
    caller = ctx.caller
    rows = []
    for handler in sorted(_hub(ctx).handlers_of(caller.client_id or ""), key=lambda handler: handler.id):
        if not caller.is_admin and handler.user_id != caller.user_id:
            continue
        if handler.offline:
            rows.append({"event": handler.event, "connector_id": handler.connector, "offline": 1})
        else:
            rows.append({"event": handler.event, "handler": handler.handler_url,
                         "auth_type": str(handler.user_id), "offline": 0})
    return rows


@rest_method("events", scope="basic", app_only=True)
def events_list(ctx: CallContext, params: dict) -> list[str]:
    query = upper_keys(params)
    hub = _hub(ctx)
    if "SCOPE" in query and query["SCOPE"] not in (None, ""):
        scope = str(query["SCOPE"])
        if scope == "crm":
            return [name for name in hub.available_events({"crm"}) if name not in BASIC_EVENTS]
        if scope == "user":
            return list(USER_EVENTS)
        return list(BASIC_EVENTS) if scope == "basic" else []
    if query.get("FULL"):
        return hub.available_events(None)
    return hub.available_events(ctx.caller.scopes)
