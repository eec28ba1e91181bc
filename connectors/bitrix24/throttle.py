"""Pacing requests so a portal's limits are met on our side, not discovered through errors.

Two limits apply (facts §6): a leaky bucket of HTTP requests per portal (+1 per request, drains
2/s, 503 once it exceeds 50; Enterprise 5/s and 250) and, per method, a sliding 10-minute budget
of execution time (429 once ``time.operating`` exceeds the limit, until ``operating_reset_at``).
`LeakyBucket` and `OperatingBudget` are the pure arithmetic (time is passed in); `Throttle` adds
locking and sleeping for a client shared by threads.

The portal counts every request of the app, whichever process sent it: the sensor's peeks, each
op of a run, reconcile and the error-lane drain all spend one bucket. Given `RequestBuckets` (the
state store), a `Throttle` takes its slots from that shared, per-portal bucket; without, it keeps
its own, which is exact only while it is the portal's sole client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from connectors.bitrix24.errors import OperationTimeLimit

# A 429 arrives without a time block (facts §1.4); if no earlier response told us when the
# method's budget resets, wait one of the limiter's one-minute buckets and look again.
UNKNOWN_RESET_WAIT_S = 60.0
# ``operating_reset_at`` is whole seconds while the budget's buckets expire at fractional times:
# waiting until the reported second can be up to a second early.
RESET_MARGIN_S = 1.0


@dataclass(frozen=True)
class RateLimits:
    """The portal's documented limits as the client should assume them (facts §6.1-§6.2)."""

    burst: int = 50  # bucket size X
    drain_per_s: float = 2.0  # drain Y
    operating_limit_s: float = 480.0  # per method, summed over 10 minutes
    # Requests kept in reserve below X: our clock and the portal's differ by the network delay,
    # and "exceeds X" may count the request being decided or not.
    headroom: int = 2

    @classmethod
    def standard(cls) -> RateLimits:
        return cls()

    @classmethod
    def enterprise(cls) -> RateLimits:
        return cls(burst=250, drain_per_s=5.0)

    @property
    def capacity(self) -> float:
        return max(1.0, float(self.burst - self.headroom))


class LeakyBucket:
    """Client-side mirror of the portal's request counter; a slot is taken when it is granted."""

    def __init__(self, limits: RateLimits, now: float) -> None:
        self.limits = limits
        self.level = 0.0
        self.updated = now

    def _drain(self, now: float) -> None:
        if now > self.updated:
            self.level = max(0.0, self.level - (now - self.updated) * self.limits.drain_per_s)
            self.updated = now

    def reserve(self, now: float) -> float:
        """Take one slot; return how long to wait before the request may be sent."""
        self._drain(now)
        wait = max(0.0, (self.level + 1.0 - self.limits.capacity) / self.limits.drain_per_s)
        self.level += 1.0
        return wait

    def saturate(self, now: float) -> None:
        """The portal said 503: someone else shares the bucket, so assume it is full."""
        self._drain(now)
        self.level = max(self.level, self.limits.capacity)


class RequestBuckets(Protocol):
    """Leaky buckets kept where every process of the deployment sees them (the state store).

    Each call is one atomic update of one portal's bucket: portals never wait on each other.
    """

    def reserve_request(self, portal: str, *, capacity: float, drain_per_s: float) -> float:
        """Take one slot of ``portal``'s bucket; return seconds to wait before sending (>= 0)."""
        ...

    def saturate_requests(self, portal: str, *, capacity: float, drain_per_s: float) -> None:
        """The portal answered 503: raise its bucket to ``capacity``."""
        ...


class OperatingBudget:
    """Per-method execution-time budgets as last reported by the portal's ``time`` blocks."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._operating: dict[str, float] = {}
        self._reset_at: dict[str, float] = {}
        self._blocked_until: dict[str, float] = {}

    def observe(self, method: str, operating: float | None, reset_at: float | None) -> None:
        if operating is not None:
            self._operating[method] = float(operating)
        if reset_at is not None:
            self._reset_at[method] = float(reset_at) + RESET_MARGIN_S

    def blocked(self, method: str, wall_now: float) -> float:
        """Unix time until which ``method`` should not be called (``wall_now`` if it is free)."""
        until = self._blocked_until.get(method, 0.0)
        # The call that crosses the limit still completes; the next one is refused (facts §6.2).
        if self._operating.get(method, 0.0) >= self.limit_s:
            until = max(until, self._reset_at.get(method, 0.0))
        return max(until, wall_now)

    def on_limit(self, method: str, wall_now: float) -> float:
        """A 429 for ``method``: block it until its reset; return that unix time."""
        reset = self._reset_at.get(method)
        if reset is None or reset <= wall_now:
            reset = wall_now + UNKNOWN_RESET_WAIT_S
        self._blocked_until[method] = reset
        return reset


class Throttle:
    """Thread-safe pacing for one portal: bucket, operating budgets and a concurrency cap.

    ``shared`` with ``portal`` makes the request bucket the deployment-wide one (facts §6.1: the
    limit is per portal, not per client); the operating budgets stay per client, as they are
    learned from this client's own answers.
    """

    def __init__(self, limits: RateLimits | None = None, *, max_concurrency: int = 2,
                 shared: RequestBuckets | None = None, portal: str | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if shared is not None and not portal:
            raise ValueError("a shared request bucket needs the portal it belongs to")
        self.limits = limits or RateLimits.standard()
        self.shared = shared
        self.portal = portal
        self._monotonic = monotonic
        self._wall = wall
        self._sleep = sleep
        self._lock = threading.Lock()
        self.bucket = LeakyBucket(self.limits, monotonic())
        self.budget = OperatingBudget(self.limits.operating_limit_s)
        self.slots = threading.BoundedSemaphore(max_concurrency)
        self.waited_s = 0.0

    def pace(self, methods: tuple[str, ...], *, max_hold_s: float | None = None) -> None:
        """Block until one request calling ``methods`` (a batch names several) may be sent.

        Raises `OperationTimeLimit` (with ``reset_at``) instead of waiting when a method's spent
        operating budget would hold the request longer than ``max_hold_s`` seconds.
        """
        with self._lock:
            wall = self._wall()
            blocked = {method: self.budget.blocked(method, wall) for method in methods}
            method, until = max(blocked.items(), key=lambda item: item[1])
            hold = until - wall
        if max_hold_s is not None and hold > max_hold_s:
            raise OperationTimeLimit("OPERATION_TIME_LIMIT", f"{method} is over its operating-time budget",
                                     status=429, method=method, reset_at=until)
        if hold > 0:
            self._pause(hold)
        if self.shared is not None:
            # No lock of ours around it: the store's update is atomic, and another thread of this
            # client may reserve its own slot meanwhile.
            wait = self.shared.reserve_request(self.portal, capacity=self.limits.capacity,
                                               drain_per_s=self.limits.drain_per_s)
        else:
            with self._lock:
                wait = self.bucket.reserve(self._monotonic())
        if wait > 0:
            self._pause(wait)

    def observe(self, method: str, time_block: dict) -> None:
        with self._lock:
            self.budget.observe(method, time_block.get("operating"), time_block.get("operating_reset_at"))

    def on_query_limit(self) -> None:
        if self.shared is not None:
            self.shared.saturate_requests(self.portal, capacity=self.limits.capacity,
                                          drain_per_s=self.limits.drain_per_s)
            return
        with self._lock:
            self.bucket.saturate(self._monotonic())

    def on_operation_limit(self, method: str) -> float:
        """Unix time the method's budget is expected back."""
        with self._lock:
            return self.budget.on_limit(method, self._wall())

    def wall_time(self) -> float:
        return self._wall()

    def _pause(self, seconds: float) -> None:
        with self._lock:
            self.waited_s += seconds
        self._sleep(seconds)
