"""The client-side mirror of the portal's limits (pure arithmetic, time passed in).

A well-paced client should almost never meet 503 QUERY_LIMIT_EXCEEDED (leaky bucket 50 / 2 per s,
Enterprise 250 / 5, facts §6.1) and should hold a method whose 10-minute operating budget is spent
until ``operating_reset_at`` instead of collecting 429s (facts §6.2).
"""

from __future__ import annotations

import random

import pytest

from connectors.bitrix24.retry import RetryPolicy
from connectors.bitrix24.throttle import (
    RESET_MARGIN_S,
    UNKNOWN_RESET_WAIT_S,
    LeakyBucket,
    OperatingBudget,
    RateLimits,
    Throttle,
)


def test_plans_have_the_documented_shapes() -> None:
    assert (RateLimits.standard().burst, RateLimits.standard().drain_per_s) == (50, 2.0)
    assert (RateLimits.enterprise().burst, RateLimits.enterprise().drain_per_s) == (250, 5.0)


def test_a_burst_goes_out_at_once_then_requests_are_spaced_by_the_drain_rate() -> None:
    limits = RateLimits.standard()
    bucket = LeakyBucket(limits, now=0.0)
    waits = [bucket.reserve(0.0) for _ in range(52)]
    assert waits[:48] == [0.0] * 48  # the bucket minus the headroom of 2
    assert waits[48:] == pytest.approx([0.5, 1.0, 1.5, 2.0])


def test_the_bucket_drains_while_idle() -> None:
    bucket = LeakyBucket(RateLimits.standard(), now=0.0)
    for _ in range(48):
        bucket.reserve(0.0)
    assert bucket.reserve(10.0) == 0.0  # 20 slots drained in 10 s
    assert bucket.level == pytest.approx(48 - 20 + 1)


def test_paced_requests_never_exceed_the_portal_bucket() -> None:
    # Replay the schedule the mirror produces against the portal's own rule (reject above 50).
    limits = RateLimits.standard()
    mirror = LeakyBucket(limits, now=0.0)
    portal_level, portal_time, now = 0.0, 0.0, 0.0
    for _ in range(500):
        now += mirror.reserve(now)
        portal_level = max(0.0, portal_level - (now - portal_time) * limits.drain_per_s)
        portal_time = now
        assert portal_level + 1 <= limits.burst
        portal_level += 1


def test_after_a_503_the_mirror_assumes_a_full_bucket() -> None:
    bucket = LeakyBucket(RateLimits.standard(), now=0.0)
    bucket.saturate(0.0)
    assert bucket.reserve(0.0) == pytest.approx(0.5)


def test_a_spent_operating_budget_holds_only_that_method_until_reset() -> None:
    budget = OperatingBudget(limit_s=480.0)
    budget.observe("crm.deal.list", operating=481.5, reset_at=1_000)
    budget.observe("crm.contact.list", operating=12.0, reset_at=900)
    assert budget.blocked("crm.deal.list", wall_now=700.0) == 1_000.0 + RESET_MARGIN_S
    assert budget.blocked("crm.contact.list", wall_now=700.0) == 700.0
    assert budget.blocked("crm.deal.list", wall_now=1_200.0) == 1_200.0


def test_a_429_waits_for_the_last_reported_reset_or_a_bucket_minute() -> None:
    budget = OperatingBudget(limit_s=480.0)
    budget.observe("crm.deal.list", operating=5.0, reset_at=1_000)
    assert budget.on_limit("crm.deal.list", wall_now=700.0) == 1_000.0 + RESET_MARGIN_S
    assert budget.blocked("crm.deal.list", wall_now=800.0) == 1_000.0 + RESET_MARGIN_S
    assert budget.on_limit("crm.lead.list", wall_now=700.0) == 700.0 + UNKNOWN_RESET_WAIT_S


def test_throttle_sleeps_for_the_budget_then_for_the_bucket() -> None:
    clock = {"now": 100.0}
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock["now"] += seconds

    throttle = Throttle(RateLimits(burst=3, drain_per_s=1.0, headroom=0), monotonic=lambda: clock["now"],
                        wall=lambda: clock["now"], sleep=sleep)
    throttle.observe("crm.deal.list", {"operating": 500.0, "operating_reset_at": 130})
    throttle.pace(("batch", "crm.deal.list"))
    assert slept == [30.0 + RESET_MARGIN_S]
    for _ in range(3):
        throttle.pace(("crm.contact.list",))
    assert slept[1:] == [pytest.approx(1.0)]
    assert throttle.waited_s == pytest.approx(31.0 + RESET_MARGIN_S)


def test_backoff_is_jittered_and_capped() -> None:
    policy = RetryPolicy(backoff_base_s=0.5, backoff_max_s=4.0)
    rng = random.Random(7)
    delays = [policy.backoff(attempt, rng) for attempt in range(1, 8)]
    assert 0.25 <= delays[0] <= 0.5
    assert all(d <= 4.0 for d in delays) and delays[-1] >= 2.0
    assert len(set(delays)) == len(delays)


class _Buckets:
    """The shared-bucket protocol over plain arithmetic, recording who asked (state store stand-in;
    the real stores are tested in tests/state and tests/connector/test_shared_bucket.py)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float, float]] = []

    def reserve_request(self, portal: str, *, capacity: float, drain_per_s: float) -> float:
        self.calls.append(("reserve", portal, capacity, drain_per_s))
        return 0.25

    def saturate_requests(self, portal: str, *, capacity: float, drain_per_s: float) -> None:
        self.calls.append(("saturate", portal, capacity, drain_per_s))


def test_a_throttle_with_a_shared_bucket_takes_its_slots_there_and_sleeps_what_it_says() -> None:
    buckets, slept = _Buckets(), []
    throttle = Throttle(RateLimits(burst=50, drain_per_s=2.0, headroom=2), shared=buckets, portal="a.bitrix24.de",
                        sleep=slept.append)
    throttle.pace(("crm.deal.list",))
    throttle.on_query_limit()

    assert buckets.calls == [("reserve", "a.bitrix24.de", 48.0, 2.0), ("saturate", "a.bitrix24.de", 48.0, 2.0)]
    assert slept == [0.25]
    assert throttle.bucket.level == 0.0  # the in-process bucket is not used


def test_a_shared_bucket_needs_its_portal() -> None:
    with pytest.raises(ValueError, match="portal"):
        Throttle(shared=_Buckets())
