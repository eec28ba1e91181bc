"""Drain claims: at most one owner drains a portal's queue at a time, across processes; a dead
owner's claim is taken over, a live one's never; the sensor's per-portal state round-trips."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from connectors.state import SensorPortalState, StateStore
from tests.state.conftest import StoreTarget

PORTAL = "acme.bitrix24.com"


def alive(*owners: str):
    return lambda owner: owner in owners


def test_a_claim_is_exclusive_until_released_and_a_dead_owners_claim_is_taken_over(store: StateStore) -> None:
    assert store.claim_drain(PORTAL, "run-a", alive())
    assert store.claim_drain(PORTAL, "run-a", alive())  # already ours
    assert not store.claim_drain(PORTAL, "run-b", alive("run-a"))
    assert store.claim_drain("other.bitrix24.com", "run-b", alive("run-a"))  # per portal

    assert store.claim_drain(PORTAL, "run-b", alive())  # run-a died: taken over
    store.release_drain(PORTAL, "run-a")  # the dead owner's late release does not free run-b's claim
    assert not store.claim_drain(PORTAL, "run-c", alive("run-b"))
    store.release_drain(PORTAL, "run-b")
    assert store.claim_drain(PORTAL, "run-c", alive("run-b"))


def test_of_many_concurrent_claimants_exactly_one_wins(store_target: StoreTarget) -> None:
    def claim(owner: str) -> bool:
        with store_target.open() as store:
            return store.claim_drain(PORTAL, owner, lambda other: True)

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(claim, [f"run-{n}" for n in range(16)]))
    assert outcomes.count(True) == 1


def test_of_many_claimants_taking_over_a_dead_owner_exactly_one_wins(store_target: StoreTarget) -> None:
    with store_target.open() as store:
        assert store.claim_drain(PORTAL, "dead-run", alive())

    def claim(owner: str) -> bool:
        with store_target.open() as store:
            return store.claim_drain(PORTAL, owner, lambda other: other != "dead-run")

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(claim, [f"run-{n}" for n in range(16)]))
    assert outcomes.count(True) == 1


def test_sensor_states_round_trip_and_are_forgotten(store: StateStore) -> None:
    state = SensorPortalState(PORTAL, bootstrapped="2026-11-30T10:00:00+00:00", pending=True, polled_at=1.5,
                              confirmed_at=None, launches=7, resync_attempts=1)
    store.save_sensor_states([state, SensorPortalState("other.bitrix24.com")])
    assert store.sensor_states()[PORTAL] == state
    state.launches, state.pending = 8, False
    store.save_sensor_states([state])
    assert store.sensor_states()[PORTAL] == state
    store.forget_sensor_states(["other.bitrix24.com"])
    assert set(store.sensor_states()) == {PORTAL}
