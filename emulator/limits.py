"""The two Bitrix24 cloud limits: the request-rate leaky bucket and the per-method time budget.

Facts §6.1: every HTTP request adds 1 to a per-portal counter that drains by ``drain_per_s``; once the
counter would exceed ``burst`` the request gets 503 ``QUERY_LIMIT_EXCEEDED`` (a ``batch`` is one request).
Facts §6.2: each (auth kind, app or webhook, method) sums execution time over ten one-minute
buckets; when the sum exceeds the limit the next call of that method gets 429
``OPERATION_TIME_LIMIT``. Only calls longer than 0.1 s are recorded, a bucket expires 600 s after the
first call in it, and ``operating_reset_at`` is when the oldest bucket expires.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

# Calls at or under this many seconds are not recorded (the limiter's ``minimalFixTime``, facts §6.2).
MINIMAL_FIX_TIME_S = 0.1
BUCKET_SPAN_S = 60
BUDGET_WINDOW_S = 600
DEFAULT_OPERATING_LIMIT_S = 480.0


@dataclass
class LimitSettings:
    """A portal's limit configuration; ``None`` for burst/drain means "what the plan says"."""

    enabled: bool = True
    burst: int | None = None
    drain_per_s: float | None = None
    # Cloud reads this from a plan variable; docs' example uses 480 s per 10 min (facts §6.2, §10.8).
    operating_limit_s: float = DEFAULT_OPERATING_LIMIT_S
    # Docs and the limiter source exempt ``batch`` itself; b24jssdk maintainers reported measuring the
    # opposite (facts §10.8, unconfirmed). Off by default; switch on to emulate that report.
    charge_batch: bool = False

    def bucket_shape(self, plan_shape: tuple[int, float]) -> tuple[int, float]:
        plan_burst, plan_drain = plan_shape
        burst = plan_burst if self.burst is None else self.burst
        drain = plan_drain if self.drain_per_s is None else self.drain_per_s
        return burst, drain


class LeakyBucket:
    """The per-portal request counter of facts §6.1 (rejected requests do not fill it)."""

    def __init__(self, burst: int, drain_per_s: float) -> None:
        self.burst = burst
        self.drain_per_s = drain_per_s
        self.level = 0.0
        self._updated = time.monotonic()

    def reshape(self, burst: int, drain_per_s: float) -> None:
        self._drain(time.monotonic())
        self.burst = burst
        self.drain_per_s = drain_per_s

    def _drain(self, now: float) -> None:
        self.level = max(0.0, self.level - (now - self._updated) * self.drain_per_s)
        self._updated = now

    def admit(self) -> bool:
        """Count one request; ``False`` means it must be answered with 503."""
        self._drain(time.monotonic())
        if self.level + 1 > self.burst:
            return False
        self.level += 1
        return True


BudgetKey = tuple[str, str, str]  # (auth type, client_id or webhook code, lower-case method)


class _Bucket:
    __slots__ = ("first_at", "minute", "seconds")

    def __init__(self, minute: int, first_at: float) -> None:
        self.minute = minute
        self.first_at = first_at
        self.seconds = 0.0


class OperatingBudget:
    """Summed method execution time per key over ten one-minute buckets (facts §6.2)."""

    def __init__(self) -> None:
        self._buckets: dict[BudgetKey, deque[_Bucket]] = {}

    def _live(self, key: BudgetKey, now: float) -> deque[_Bucket] | None:
        buckets = self._buckets.get(key)
        if buckets is None:
            return None
        while buckets and buckets[0].first_at + BUDGET_WINDOW_S <= now:
            buckets.popleft()
        if not buckets:
            del self._buckets[key]
            return None
        return buckets

    def record(self, key: BudgetKey, seconds: float, now: float | None = None) -> float:
        """Charge one call; returns the seconds actually charged (0 under the 0.1 s floor)."""
        if seconds <= MINIMAL_FIX_TIME_S:
            return 0.0
        now = time.time() if now is None else now
        minute = int(now // BUCKET_SPAN_S)
        buckets = self._live(key, now)
        if buckets is None:
            buckets = self._buckets[key] = deque()
        if not buckets or buckets[-1].minute != minute:
            buckets.append(_Bucket(minute, now))
        buckets[-1].seconds += seconds
        return seconds

    def status(self, key: BudgetKey, now: float | None = None) -> tuple[float, int | None]:
        """``(operating, operating_reset_at)`` for the ``time`` block; reset is None with no buckets."""
        buckets = self._live(key, time.time() if now is None else now)
        if buckets is None:
            return 0.0, None
        return sum(b.seconds for b in buckets), int(buckets[0].first_at + BUDGET_WINDOW_S)

    def clear(self) -> None:
        self._buckets.clear()


class PortalLimits:
    """One portal's live limiter state: `LimitSettings` over the plan's (burst, drain) shape."""

    def __init__(self, settings: LimitSettings, plan_shape: tuple[int, float]) -> None:
        self.settings = settings
        self.bucket = LeakyBucket(*settings.bucket_shape(plan_shape))
        self.budget = OperatingBudget()

    def reconfigure(self, plan_shape: tuple[int, float]) -> None:
        self.bucket.reshape(*self.settings.bucket_shape(plan_shape))

    def admit_request(self) -> bool:
        return not self.settings.enabled or self.bucket.admit()

    def method_blocked(self, key: BudgetKey) -> bool:
        if not self.settings.enabled:
            return False
        operating, _ = self.budget.status(key)
        return operating > self.settings.operating_limit_s
