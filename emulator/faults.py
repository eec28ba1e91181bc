"""Injected failures, so clients can be tested against the ways a real portal and its network fail.

A fault matches a method name (or ``*``) and fires with probability ``rate``, at most ``count`` times.
Kinds and where they act:

- ``http_500``: 500 ``INTERNAL_SERVER_ERROR`` JSON (facts §1.5), before the method runs;
- ``html``: a 502 HTML error page as a proxy in front of the portal would send, before the method runs;
- ``malformed_json``: the method runs, then its response body is cut in half;
- ``drop``: the method runs, then the connection is closed after the status line, before the body;
- ``slow``: the method sleeps ``delay_s`` inside its processing time (so it counts toward the 429
  budget, facts §6.2); also matches ``batch`` sub-calls by their own name;
- ``expire_token``: the caller's access token expires now, so this call gets 401 ``expired_token``;
- ``access_denied``: the call is refused with 403 ``ACCESS_DENIED`` before it runs, as for objects the
  app's user may not see; also matches ``batch`` sub-calls by their own name (a refused command).

``phase`` ("before" or "after" the method runs) can be overridden for http_500, html,
malformed_json and drop: "after" models a request that changed state but whose answer was lost.

Each portal has its own plan; the shared OAuth server has one more (control API ``/oauth/faults``),
whose method names are ``token`` (the token endpoint: an "after" fault rotates the pair and loses the
answer) and ``app.info``. There ``slow`` delays the answer and ``expire_token`` expires the token
presented to ``app.info``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Literal

FaultKind = Literal["http_500", "html", "malformed_json", "drop", "slow", "expire_token", "access_denied"]
FAULT_KINDS: tuple[str, ...] = ("http_500", "html", "malformed_json", "drop", "slow", "expire_token",
                                "access_denied")
RESPONSE_KINDS = frozenset({"http_500", "html", "malformed_json", "drop"})
# Drawn once per HTTP request (by the top-level method name) and once per executed call, respectively.
TRANSPORT_KINDS = RESPONSE_KINDS | {"expire_token"}
SLOW_KINDS = frozenset({"slow"})
REFUSAL_KINDS = frozenset({"access_denied"})
_DEFAULT_PHASE = {"http_500": "before", "html": "before", "malformed_json": "after", "drop": "after"}


class FaultSpecError(ValueError):
    """A fault description that cannot be applied."""


@dataclass
class Fault:
    method: str  # lower-case method name, or "*"
    kind: str
    rate: float = 1.0
    count: int | None = None  # fire at most this many times; None = unlimited
    delay_s: float = 1.0  # "slow" only
    phase: str = ""  # "before" | "after" for response faults; filled from the kind when empty

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            expected = ", ".join(FAULT_KINDS)
            raise FaultSpecError(f"unknown fault kind {self.kind!r}; expected one of {expected}")
        if not 0.0 <= self.rate <= 1.0:
            raise FaultSpecError("rate must be between 0 and 1")
        if self.count is not None and self.count < 1:
            raise FaultSpecError("count must be positive")
        if self.delay_s < 0:
            raise FaultSpecError("delay_s must not be negative")
        self.method = self.method.lower()
        if self.kind in RESPONSE_KINDS:
            self.phase = self.phase or _DEFAULT_PHASE[self.kind]
            if self.phase not in ("before", "after"):
                raise FaultSpecError("phase must be 'before' or 'after'")
        else:
            self.phase = ""

    def describe(self) -> dict:
        return asdict(self)


class FaultPlan:
    """The faults configured for one portal, or for the OAuth server."""

    def __init__(self, seed: int | None = None) -> None:
        self._faults: list[Fault] = []
        self._random = random.Random(seed)

    def add(self, fault: Fault) -> None:
        self._faults.append(fault)

    def clear(self) -> None:
        self._faults.clear()

    def describe(self) -> list[dict]:
        return [fault.describe() for fault in self._faults]

    def draw(self, method: str, kinds: frozenset[str]) -> Fault | None:
        """The fault that fires for this call of ``method`` among ``kinds``, if any."""
        if not self._faults:
            return None
        for fault in self._faults:
            if fault.kind not in kinds or (fault.method != "*" and fault.method != method):
                continue
            if fault.rate < 1.0 and self._random.random() >= fault.rate:
                continue
            if fault.count is not None:
                fault.count -= 1
                if fault.count == 0:
                    self._faults.remove(fault)
            return fault
        return None
