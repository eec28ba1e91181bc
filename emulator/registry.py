"""How REST methods are declared and what a handler receives.

A handler is a plain function ``(ctx: CallContext, params: dict) -> Any`` registered with
``@rest_method("crm.deal.list", scope="crm")``. It returns the method's ``result`` value, or a
`Page` for list methods (the transport lifts ``total``/``next`` to the top level, §1.2), and raises
`emulator.errors.RestError` subclasses for failures. Params arrive already decoded (JSON body or PHP
bracket query) as nested dicts/lists with the caller's original key case; auth keys are removed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from emulator.portal import Portal


@dataclass(frozen=True)
class Caller:
    """Who is calling, as resolved by the transport from the token or webhook."""

    auth_type: Literal["oauth", "webhook"]
    user_id: int
    is_admin: bool
    scopes: frozenset[str]
    client_id: str | None = None  # the app (OAuth calls only)
    webhook_code: str | None = None
    auth_connector: str = ""  # from the request params; feature-checked by the transport


@dataclass
class CallContext:
    portal: Portal
    caller: Caller
    method: str  # lower-case method name


@dataclass
class Page:
    """A list result: ``items`` becomes ``result``; ``total``/``next`` go to the envelope top level."""

    items: Any
    total: int | None = None
    next: int | None = None


Handler = Callable[[CallContext, dict], Any]


@dataclass(frozen=True)
class RestMethod:
    name: str
    scope: str  # "crm", "basic", "event" ...; checked against Caller.scopes by the transport
    handler: Handler
    app_only: bool = False  # event.* and event.offline.*: webhooks get 403 WRONG_AUTH_TYPE


METHODS: dict[str, RestMethod] = {}


def rest_method(name: str, *, scope: str, app_only: bool = False) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        key = name.lower()
        if key in METHODS:
            raise RuntimeError(f"REST method registered twice: {name}")
        METHODS[key] = RestMethod(key, scope, handler, app_only)
        return handler

    return register


def param(params: dict, name: str, default: Any = None) -> Any:
    """Bitrix24 reads parameter keys case-insensitively (event.*, batch, lists)."""
    if name in params:
        return params[name]
    lowered = name.lower()
    for key, value in params.items():
        if key.lower() == lowered:
            return value
    return default
