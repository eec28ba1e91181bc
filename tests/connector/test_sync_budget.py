"""The request budget and the portal's limits, end to end: reserve -> plan -> fetch -> ack.

DESIGN §5: per 2,500 changed objects one batch of reserves, one of fetches, one of clears. With
limits on, 10,000 changes of three kinds must take at most 15 HTTP requests (counted by the
emulator); a 50/2 portal must be drained by one paced client without a single 503, and by two
competing clients with retries and nothing lost; a spent operating budget (429) is waited out until
``operating_reset_at`` (facts §6).
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

import emulator.limits
from connectors.bitrix24 import (
    EntityRegistry,
    MalformedResponse,
    OfflineQueue,
    RateLimits,
    Throttle,
    fetch_changes,
    plan_changes,
)
from emulator.testing import run_emulator
from tests.connector.conftest import user_changes

CONNECTOR = "warehouse"
KINDS = EntityRegistry.standard().subset(["deal", "contact", "company"])


def drain_step(queue: OfflineQueue, registry: EntityRegistry, max_rows: int) -> dict[str, set[int]]:
    """One step of the CDC loop without a warehouse: what it fetched, per kind; acks at the end."""
    reserved = queue.reserve(max_rows=max_rows)
    plan = plan_changes(reserved.events, registry)
    fetched = fetch_changes(queue.client, plan) if plan.fetch_count else {}
    queue.ack(reserved.process_ids)
    assert plan.unknown == ()
    return {key: {int(row["ID"]) for row in result.records} for key, result in fetched.items()}


def changed_everywhere(emu, kinds: dict[str, int]) -> dict[str, set[int]]:
    return {entity: set(user_changes(emu, entity, "update", list(range(1, count + 1))))
            for entity, count in kinds.items()}


def test_ten_thousand_changes_take_at_most_fifteen_requests(oauth_client) -> None:
    counts = {"deal": 4000, "contact": 3000, "company": 3000}
    with run_emulator(limits=True, plan="professional",
                      counts={**counts, "lead": 0, "activity": 0, "item": 0}) as emu:
        OfflineQueue(oauth_client(emu), CONNECTOR).bind(KINDS)
        changed = changed_everywhere(emu, counts)
        emu.reset_stats()

        queue = OfflineQueue(oauth_client(emu), CONNECTOR)
        queue.features(refresh=True)
        fetched = drain_step(queue, KINDS, max_rows=10_000)

        stats = emu.stats()
        assert fetched == changed
        assert stats["http_requests"] <= 15, stats
        assert stats["status"].get("503", 0) == 0
        assert emu.queue() == []


def drain_in_small_steps(queue: OfflineQueue, registry: EntityRegistry) -> dict[str, set[int]]:
    # Steps of 50 rows: three requests per step, so the run crosses the 50-request burst.
    seen: dict[str, set[int]] = {}
    while True:
        fetched = drain_step(queue, registry, max_rows=50)
        if not fetched:
            return seen
        for key, ids in fetched.items():
            seen.setdefault(key, set()).update(ids)


def test_a_standard_plan_portal_is_drained_by_one_client_with_zero_503s(limited_emu, oauth_client) -> None:
    limited_emu.reset_stats()
    queue = OfflineQueue(oauth_client(limited_emu, limits=RateLimits.standard()), CONNECTOR)
    queue.bind(KINDS)
    changed = changed_everywhere(limited_emu, {"deal": 20, "contact": 10})
    changed["deal"] |= set(user_changes(limited_emu, "deal", "add", count=850))

    seen = drain_in_small_steps(queue, KINDS)

    stats = limited_emu.stats()
    assert seen == changed
    assert stats["http_requests"] > 55  # past the burst of 50: pacing was needed
    assert stats["status"].get("503", 0) == 0 and queue.client.usage.retries == 0
    assert limited_emu.queue() == []


def test_two_competing_clients_drain_with_retries_and_nothing_lost(limited_emu, oauth_client) -> None:
    OfflineQueue(oauth_client(limited_emu), CONNECTOR).bind(KINDS)
    changed = set(user_changes(limited_emu, "deal", "add", count=1000))
    limited_emu.reset_stats()

    queues = [OfflineQueue(oauth_client(limited_emu, max_concurrency=1), CONNECTOR) for _ in range(2)]
    results: list[dict[str, set[int]]] = []
    failures: list[BaseException] = []

    def worker(queue: OfflineQueue) -> None:
        try:
            results.append(drain_in_small_steps(queue, KINDS))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(queue,)) for queue in queues]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    first, second = (result.get("deal", set()) for result in results)
    assert first | second == changed and first and second
    stats = limited_emu.stats()
    assert stats["status"].get("503", 0) > 0  # they did compete for one bucket ...
    assert sum(queue.client.usage.retries for queue in queues) >= stats["status"]["503"]  # ... and retried
    assert limited_emu.queue() == []


class _TimeTravel:
    """One clock for the emulator's operating-time limiter and our throttle: sleeping moves both
    forward instead of waiting ten real minutes for a budget window to pass."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.slept: list[float] = []

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.offset += seconds


@pytest.fixture
def time_travel(monkeypatch: pytest.MonkeyPatch) -> _TimeTravel:
    clock = _TimeTravel()
    monkeypatch.setattr(emulator.limits, "time", SimpleNamespace(time=clock.time, monotonic=clock.monotonic))
    return clock


def test_a_forced_429_waits_for_operating_reset_at(emu, oauth_client, time_travel) -> None:
    emu.patch_portal(limits={"enabled": True, "operating_limit_s": 0.2})
    emu.add_fault("profile", "slow", delay_s=0.3, count=1)
    throttle = Throttle(RateLimits.standard(), wall=time_travel.time, monotonic=time_travel.monotonic,
                        sleep=time_travel.sleep)
    client = oauth_client(emu, throttle=throttle)

    first = client.call("profile")  # 0.3 s charged: the budget of 0.2 s is spent
    reset_at = first.time["operating_reset_at"]
    assert first.time["operating"] > 0.2
    before = time_travel.time()
    assert client.call("profile").result["ID"] == 1  # 429, wait for the reset, retry

    assert emu.stats()["methods"]["profile"]["status_429"] == 1
    assert sum(time_travel.slept) == pytest.approx(reset_at - before, abs=1.5)
    assert client.usage.retries == 1


def test_a_client_that_knows_the_budget_holds_the_method_instead_of_meeting_429(
        emu, oauth_client, time_travel) -> None:
    emu.patch_portal(limits={"enabled": True, "operating_limit_s": 0.2})
    emu.add_fault("profile", "slow", delay_s=0.3, count=1)
    throttle = Throttle(RateLimits(operating_limit_s=0.2), wall=time_travel.time,
                        monotonic=time_travel.monotonic, sleep=time_travel.sleep)
    client = oauth_client(emu, throttle=throttle)
    client.call("profile")
    client.call("app.info")  # other methods are not held
    assert time_travel.slept == []
    client.call("profile")
    assert emu.stats()["methods"]["profile"]["status_429"] == 0
    assert len(time_travel.slept) == 1 and time_travel.slept[0] > 590


def test_a_malformed_response_raises_and_nothing_is_acked(emu, oauth_client) -> None:
    client = oauth_client(emu)
    queue = OfflineQueue(client, CONNECTOR)
    queue.bind(KINDS)
    user_changes(emu, "deal", "update", list(range(1, 21)))
    reserved = queue.reserve()
    plan = plan_changes(reserved.events, KINDS)
    emu.add_fault("batch", "malformed_json")  # every answer cut off: the retries of the read run out
    with pytest.raises(MalformedResponse):
        fetch_changes(client, plan)
    emu.clear_faults()
    # The step stops here; the rows stay reserved for recovery.
    assert "event.offline.clear" not in emu.stats()["methods"]
    assert {row["PROCESS_ID"] for row in emu.queue()} == set(reserved.process_ids)
    recovered = queue.reread_all(reserved.process_ids)
    assert fetch_changes(client, plan_changes([e for r in recovered for e in r.events], KINDS))["deal"].not_found == ()
    queue.ack(reserved.process_ids)
    assert emu.queue() == []


def test_deleted_objects_become_tombstones_or_not_found(emu, oauth_client) -> None:
    client = oauth_client(emu)
    queue = OfflineQueue(client, CONNECTOR)
    queue.bind(KINDS)
    user_changes(emu, "deal", "update", [1, 2, 3])
    user_changes(emu, "deal", "delete", [2])
    reserved = queue.reserve()
    user_changes(emu, "deal", "delete", [3])  # deleted after the reservation, before the fetch
    plan = plan_changes(reserved.events, KINDS)
    assert plan.kinds["deal"].tombstone_ids == (2,)
    fetched = fetch_changes(client, plan)["deal"]
    assert [int(r["ID"]) for r in fetched.records] == [1] and fetched.not_found == (3,)
