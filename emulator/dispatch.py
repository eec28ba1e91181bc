"""One REST method call as the portal runs it: checks, budget, handler, and the ``time`` block.

Used for top-level calls and for every ``batch`` sub-call alike. The order of checks follows the
facts sheet: unknown method (§1.5), nested batch (§5), app-only methods for webhooks (§7.1), scope,
``auth_connector`` licence (§2.2), then the operating-time budget (§6.2) before the handler runs.
Handlers run synchronously under ``portal.lock``; the async ``batch`` handler runs without it and takes
it per sub-call.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from typing import TYPE_CHECKING, Any

from emulator.crm.clock import DEFAULT_UTC_OFFSET
from emulator.errors import (
    AccessDenied,
    InsufficientScope,
    MethodNotFound,
    OperationTimeLimit,
    RestError,
    WrongAuthType,
    WrongLicense,
)
from emulator.faults import REFUSAL_KINDS, SLOW_KINDS
from emulator.registry import METHODS, CallContext, Caller, Page, RestMethod

if TYPE_CHECKING:
    from emulator.limits import BudgetKey
    from emulator.portal import Portal

log = logging.getLogger(__name__)

BATCH = "batch"
# Scope every app and webhook has: system methods, event.*, feature.get (contract §1).
BASIC_SCOPE = "basic"


class BatchMethodNotAllowed(RestError):
    status = 405
    code = "ERROR_BATCH_METHOD_NOT_ALLOWED"

    def __init__(self) -> None:
        super().__init__("Method is not allowed for batch usage")


class InternalServerError(RestError):
    status = 500
    code = "INTERNAL_SERVER_ERROR"

    def __init__(self) -> None:
        super().__init__("Internal server error")


@dataclass
class CallOutcome:
    result: Any = None
    total: int | None = None
    next: int | None = None
    error: RestError | None = None
    time: dict | None = None

    @property
    def status(self) -> int:
        return 200 if self.error is None else self.error.status


def iso_time(timestamp: float, tz: tzinfo) -> str:
    """ISO 8601 at second resolution with the portal's UTC offset, like its CRM dates (facts §1.3, §4.7)."""
    return datetime.fromtimestamp(int(timestamp), tz).isoformat()


def time_block(start: float, finish: float, processing: float, operating: float,
               operating_reset_at: int | None, tz: tzinfo) -> dict[str, Any]:
    """The envelope's ``time`` block (facts §1.3); ``tz`` is the portal's zone."""
    block: dict[str, Any] = {
        "start": start,
        "finish": finish,
        "duration": finish - start,
        "processing": processing,
        "date_start": iso_time(start, tz),
        "date_finish": iso_time(finish, tz),
    }
    # Present only when non-null (facts §1.3).
    if operating_reset_at is not None:
        block["operating_reset_at"] = operating_reset_at
    block["operating"] = operating
    return block


def _portal_zone(portal: Portal) -> tzinfo:
    clock = getattr(portal.crm, "clock", None)
    return clock.tz if clock is not None else timezone(DEFAULT_UTC_OFFSET)


def budget_key(caller: Caller, method: str) -> BudgetKey:
    return caller.auth_type, caller.client_id or caller.webhook_code or "", method


def _check_access(portal: Portal, caller: Caller, method: RestMethod, in_batch: bool) -> None:
    if in_batch and method.name == BATCH:
        raise BatchMethodNotAllowed()
    if method.app_only and caller.auth_type != "oauth":
        raise WrongAuthType()
    if method.scope != BASIC_SCOPE and method.scope not in caller.scopes:
        if caller.auth_type == "webhook":
            raise InsufficientScope(
                "The request requires higher privileges than provided by the webhook token")
        raise InsufficientScope()
    if caller.auth_connector and "rest_auth_connector" not in portal.features:
        raise WrongLicense("auth_connector")


async def execute(portal: Portal, caller: Caller, method_name: str, params: dict, *,
                  started: float | None = None, in_batch: bool = False) -> CallOutcome:
    """Run one call of ``method_name`` (lower case, no ``.json``) for ``caller`` on ``portal``."""
    start = time.time() if started is None else started
    outcome = CallOutcome()
    processing = 0.0
    charged = 0.0
    key = budget_key(caller, method_name)
    try:
        method = METHODS.get(method_name)
        if method is None:
            raise MethodNotFound()
        _check_access(portal, caller, method, in_batch)
        if portal.limits.method_blocked(key):
            raise OperationTimeLimit()
        if portal.faults.draw(method_name, REFUSAL_KINDS) is not None:
            raise AccessDenied()
        slow = portal.faults.draw(method_name, SLOW_KINDS)
        begin = time.perf_counter()
        try:
            if slow is not None:
                # Event-loop timers may fire a little early; the delay is a floor for processing.
                wake = begin + slow.delay_s
                while (left := wake - time.perf_counter()) > 0:
                    await asyncio.sleep(left)
            ctx = CallContext(portal, caller, method_name)
            if inspect.iscoroutinefunction(method.handler):
                value = await method.handler(ctx, params)
            else:
                with portal.lock:
                    value = method.handler(ctx, params)
        finally:
            processing = time.perf_counter() - begin
            if method_name != BATCH or portal.limit_settings.charge_batch:
                charged = portal.limits.budget.record(key, processing)
        if isinstance(value, Page):
            outcome.result, outcome.total, outcome.next = value.items, value.total, value.next
        else:
            outcome.result = value
    except RestError as error:
        outcome.error = error
    except Exception:
        log.exception("method %s failed inside the emulator", method_name)
        outcome.error = InternalServerError()
    if outcome.error is None:
        operating, reset_at = portal.limits.budget.status(key)
        outcome.time = time_block(start, time.time(), processing, operating, reset_at, _portal_zone(portal))
    portal.stats.record_call(method_name, outcome.status, charged)
    return outcome
