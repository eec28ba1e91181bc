"""The REST client: one portal, one connection pool, every call paced, accounted and typed.

A call is a POST with a JSON body to ``{endpoint}{method}``; OAuth tokens travel in the body as
``auth`` (facts §1.1), never in the URL. Each answer is either the success envelope
(``result``/``total``/``next``/``time``, facts §1.2) or an error envelope mapped to a typed
exception (facts §1.4-§1.5); anything else (an HTML page, broken JSON) is `MalformedResponse`.
Retries follow `connectors.bitrix24.retry` (the policy is spelled out there).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from connectors.bitrix24.auth import Credentials
from connectors.bitrix24.batch import MAX_COMMANDS, BatchResult, Command, chunked
from connectors.bitrix24.errors import (
    Bitrix24Error,
    ExpiredToken,
    LimitExceeded,
    MalformedResponse,
    OperationTimeLimit,
    ServerError,
    TransportError,
    error_from_body,
)
from connectors.bitrix24.redaction import install_log_filter, redact
from connectors.bitrix24.retry import RetryPolicy, is_retry_safe
from connectors.bitrix24.throttle import RateLimits, Throttle
from connectors.bitrix24.tls import tls_context
from connectors.bitrix24.usage import Usage

log = logging.getLogger(__name__)

# Cloud cuts a single request at 60 s (facts §6.2); give the answer a little longer to arrive.
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=75.0, write=30.0, pool=120.0)
_MAX_REDIRECTS = 3
# Raised before a byte left this machine: safe to retry whatever the method.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class ApiResponse:
    result: Any
    total: int | None = None
    next: int | None = None
    time: dict = field(default_factory=dict)


class _Transient(Exception):
    """Internal: an attempt failed in a way a retry may fix; carries what to raise otherwise."""

    def __init__(self, error: Bitrix24Error, sent: bool) -> None:
        self.error = error
        self.sent = sent


class Bitrix24Client:
    """Talks to one portal with one set of credentials; safe to share between threads."""

    def __init__(self, credentials: Credentials, *, limits: RateLimits | None = None,
                 throttle: Throttle | None = None, retry: RetryPolicy | None = None,
                 max_concurrency: int = 2, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None, seed: int | None = None) -> None:
        install_log_filter()
        self.credentials = credentials
        self.throttle = throttle or Throttle(limits, max_concurrency=max_concurrency)
        self.retry = retry or RetryPolicy()
        self.usage = Usage()
        self._rng = random.Random(seed)
        self._http = httpx.Client(
            timeout=timeout, transport=transport, follow_redirects=False, verify=tls_context(),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
            headers={"Accept": "application/json", "User-Agent": "bitrix24-warehouse-connector"},
        )

    def __repr__(self) -> str:
        return f"Bitrix24Client(portal={self.portal!r})"

    @property
    def portal(self) -> str:
        return self.credentials.portal

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Bitrix24Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(self, method: str, params: Mapping[str, Any] | None = None, *,
             retry_safe: bool | None = None) -> ApiResponse:
        """Run one method; raises the typed error the portal answered with."""
        params = dict(params or {})
        safe = is_retry_safe(method, params) if retry_safe is None else retry_safe
        return self._request(method.lower(), params, safe, (method.lower(),))

    def batch(self, commands: Mapping[str, Command], *, halt: bool = False) -> BatchResult:
        """Run up to 50 commands as one HTTP request; per-command results and typed errors.

        Commands refused by a method's time budget (429 inside the batch) did not run, so they
        are sent again, without the others, once the budget resets.
        """
        if len(commands) > MAX_COMMANDS:
            raise ValueError(f"a batch holds at most {MAX_COMMANDS} commands, got {len(commands)}")
        outcome = self._batch_once(commands, halt)
        for _attempt in range(1, self.retry.attempts):
            refused = {key: commands[key] for key, error in outcome.errors.items()
                       if isinstance(error, OperationTimeLimit) and not _refers(commands[key])}
            if not refused:
                break
            for key in refused:
                self._wait_for_budget(commands[key].method.lower(), outcome.errors.pop(key))
            outcome.absorb(self._batch_once(refused, halt))
        return outcome

    def batch_all(self, commands: Mapping[str, Command]) -> BatchResult:
        """Any number of independent commands, 50 per request, results merged."""
        merged = BatchResult({}, {}, {}, {}, {})
        for chunk in chunked(commands):
            merged.absorb(self.batch(chunk))
        return merged

    def _batch_once(self, commands: Mapping[str, Command], halt: bool) -> BatchResult:
        encoded = {key: command.encode() for key, command in commands.items()}
        params = {"halt": 1 if halt else 0, "cmd": encoded}
        methods = tuple(dict.fromkeys(["batch", *(c.method.lower() for c in commands.values())]))
        response = self._request("batch", params, is_retry_safe("batch", params), methods)
        outcome = BatchResult.parse(response.result, commands)
        for key, command in commands.items():
            name = command.method.lower()
            if key in outcome.errors:
                self.usage.error(name)
                if isinstance(outcome.errors[key], OperationTimeLimit):
                    self.throttle.on_operation_limit(name)
            elif key in outcome.results:
                time_block = outcome.times.get(key)
                self.usage.call(name, time_block)
                if isinstance(time_block, dict):
                    self.throttle.observe(name, time_block)
        return outcome

    def _request(self, method: str, params: dict, retry_safe: bool, pace: tuple[str, ...]) -> ApiResponse:
        renewed = False
        failures = 0  # transient failures and 429s, limited by attempts
        refusals = 0  # 503s, limited by the total time waited for them
        refused_for = 0.0
        while True:
            grant = self.credentials.grant()
            try:
                return self._attempt(method, {**params, **grant.body}, grant.endpoint + method, pace)
            except ExpiredToken:
                if renewed:
                    raise
                # Refresh once and retry (facts §7.2); the session makes this single-flight.
                self.credentials.renew(grant)
                self.usage.refresh()
                renewed = True
                continue
            except OperationTimeLimit as error:
                failures += 1
                if failures >= self.retry.attempts:
                    raise
                self._wait_for_budget(method, error)
            except LimitExceeded as error:
                refusals += 1
                delay = self.retry.backoff(refusals, self._rng)
                if refused_for + delay > self.retry.max_query_limit_wait_s:
                    raise
                refused_for += delay
                # Someone else fills this portal's bucket too: assume it is full, then back off.
                self.throttle.on_query_limit()
                self._sleep(delay, refusals, method, error)
            except _Transient as transient:
                failures += 1
                if failures >= self.retry.attempts or (transient.sent and not retry_safe):
                    raise transient.error from None
                self._sleep(self.retry.backoff(failures, self._rng), failures, method, transient.error)
            self.usage.retry()

    def _wait_for_budget(self, method: str, error: OperationTimeLimit) -> None:
        reset_at = self.throttle.on_operation_limit(method)
        error.reset_at = reset_at
        wait = reset_at - self.throttle.wall_time()
        if wait > self.retry.max_operating_wait_s:
            raise error
        log.warning("portal %s: %s is over its operating-time budget; waiting %.0f s for the reset",
                    self.portal, method, max(wait, 0.0))
        # Throttle.pace holds the method until the reset before the next attempt goes out.

    def _sleep(self, delay: float, attempt: int, method: str, error: Exception) -> None:
        log.warning("portal %s: %s failed (%s); retry %d in %.1f s", self.portal, method,
                    type(error).__name__, attempt, delay)
        time.sleep(delay)

    def _attempt(self, method: str, body: dict, url: str, pace: tuple[str, ...]) -> ApiResponse:
        # Every wait for a spent operating budget is bounded, also this one before a request
        # (a per-kind retry after a refused batch lands here first).
        self.throttle.pace(pace, max_hold_s=self.retry.max_operating_wait_s)
        with self.throttle.slots:
            response = self._post(method, url, body)
        self.usage.request(response.status_code)
        envelope = self._decode(method, response)
        if "error" in envelope:
            self.usage.error(method)
            error = error_from_body(envelope, status=response.status_code, method=method)
            if isinstance(error, ServerError) or (
                    response.status_code >= 500 and not isinstance(error, LimitExceeded)):
                raise _Transient(error, sent=True)
            raise error
        if "result" not in envelope:
            raise _Transient(MalformedResponse(method, response.status_code, "neither result nor error",
                                               response.content), sent=True)
        time_block = envelope.get("time") if isinstance(envelope.get("time"), dict) else {}
        self.usage.call(method, time_block)
        self.throttle.observe(method, time_block)
        return ApiResponse(envelope["result"], _int_or_none(envelope.get("total")),
                           _int_or_none(envelope.get("next")), time_block)

    def _post(self, method: str, url: str, body: dict) -> httpx.Response:
        content = orjson.dumps(body)
        headers = {"Content-Type": "application/json"}
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                response = self._http.post(url, content=content, headers=headers)
                location = response.headers.get("location")
                if response.status_code not in (301, 302, 307, 308) or not location:
                    return response
                # A renamed portal answers 302 to its new domain; POST must be repeated there
                # (facts §1.1), whereas httpx would follow with a GET.
                url = str(response.url.join(location))
                log.warning("portal %s: %s redirected to a new address", self.portal, method)
            raise MalformedResponse(method, response.status_code, "too many redirects")
        except _NOT_SENT as exc:
            raise _Transient(TransportError(_describe(method, exc)), sent=False) from None
        except httpx.HTTPError as exc:
            raise _Transient(TransportError(_describe(method, exc)), sent=True) from None

    @staticmethod
    def _decode(method: str, response: httpx.Response) -> dict:
        try:
            envelope = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            envelope = None
        if isinstance(envelope, dict):
            return envelope
        reason = "not JSON" if envelope is None else "JSON but not an object"
        content_type = response.headers.get("content-type", "")
        if "html" in content_type:
            reason = "an HTML page"
        # A body cut off in transit (a 200 with half a JSON document) says nothing about whether the
        # portal ran the call: like a dropped connection, it is retried where a repeat is safe.
        raise _Transient(MalformedResponse(method, response.status_code, reason, response.content), sent=True)


def _refers(command: Command) -> bool:
    return "$result[" in command.encode()


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _describe(method: str, exc: Exception) -> str:
    # httpx messages can quote the URL, and a webhook URL contains its code.
    return redact(f"{method}: {type(exc).__name__}: {exc}")
