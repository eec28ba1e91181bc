"""The offline-events sensor, evaluated like the daemon evaluates it, against the emulator.

Under test: new portals become partitions and get a full resync; a portal with pending rows gets one
sync run and a queue observation, one without gets nothing; the sensor only ever reads the queue
(never the destructive event.offline.get); and a tick over a thousand portals stays a handful of
HTTP calls because it peeks only signalled portals and a bounded round-robin slice.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from dagster._core.utils import make_new_run_id

from connectors.bitrix24 import EntityRegistry
from connectors.receiver import portal_key
from connectors.state import Portal, open_state_store
from emulator.events import Origin
from emulator.testing import ThreadEmulator
from pipelines.definitions import defs
from pipelines.resources import Bitrix24Resource
from pipelines.sensors import POLLS_PER_TICK, RESYNC_ATTEMPTS, offline_events_sensor


def install(emu: ThreadEmulator, state_path: Path, key: str | None = None, tokens: dict | None = None) -> str:
    tokens = tokens or emu.install_tokens()
    key = key or portal_key(tokens["client_endpoint"])
    with open_state_store(state_path) as state:
        state.save_portal(Portal(key=key, member_id=f"member-{key}", domain="emulator",
                                 client_endpoint=tokens["client_endpoint"], application_token="app-token",
                                 installed_at=datetime.now(UTC)))
        state.save_token(key, tokens)
    return key


def bind_deal_events(resource: Bitrix24Resource, key: str) -> None:
    with resource.client(key) as client:
        resource.queue(client).bind(EntityRegistry.standard().subset(["deal"]))


def evaluate(instance: dg.DagsterInstance, resource: Bitrix24Resource, cursor: str | None = None,
             status: dg.DagsterRunStatus = dg.DagsterRunStatus.SUCCESS):
    """One tick; the partitions it asks for are added as the daemon would add them, and the runs it
    asks for as if they had ended at once with ``status``."""
    context = dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(), definitions=defs,
                                      cursor=cursor, resources={"bitrix24": resource})
    result = offline_events_sensor.evaluate_tick(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    for request in result.run_requests or []:
        # As if the daemon launched it and it finished at once.
        instance.add_run(dg.DagsterRun(job_name=request.job_name, run_id=make_new_run_id(), status=status,
                                       tags={**request.tags, "dagster/run_key": request.run_key,
                                             **({"dagster/partition": request.partition_key}
                                                if request.partition_key else {})}))
    return result


def resource_for(emu: ThreadEmulator, state_path: Path, **settings) -> Bitrix24Resource:
    return Bitrix24Resource(client_id=emu.client_id, client_secret=emu.client_secret,
                            oauth_token_url=f"{emu.url}/oauth/token/", state_store=str(state_path), **settings)


def test_a_new_portal_becomes_a_partition_with_a_full_resync(emu: ThreadEmulator, tmp_path: Path) -> None:
    state_path = tmp_path / "state.sqlite3"
    key = install(emu, state_path)
    with dg.instance_for_test() as instance:
        result = evaluate(instance, resource_for(emu, state_path))
        # Its full resync (then its reference data and the analysts' views, in the same run).
        [request] = result.run_requests
        assert request.job_name == "full_resync_portals" and request.tags["bitrix24/portals"] == key
        assert request.run_config["ops"]["full_resync_portal_group"]["config"]["portals"] == [key]
        assert instance.get_dynamic_partitions("bitrix24_portal") == [key]

        # The next tick does not ask again.
        again = evaluate(instance, resource_for(emu, state_path), result.cursor)
        assert [r.job_name for r in again.run_requests] == []


def test_pending_rows_start_one_sync_run_and_are_observed_without_being_read(
        emu: ThreadEmulator, tmp_path: Path) -> None:
    state_path = tmp_path / "state.sqlite3"
    key = install(emu, state_path)
    resource = resource_for(emu, state_path)
    bind_deal_events(resource, key)
    with dg.instance_for_test() as instance:
        first = evaluate(instance, resource)
        assert [r.job_name for r in first.run_requests] == ["full_resync_portals"]  # queue empty

        emu.world.portal("default").crm.write("deal", "update", 3, {"TITLE": "changed"}, Origin(user_id=2))
        with open_state_store(state_path) as state:
            state.record_signal(key)
        emu.reset_stats()
        second = evaluate(instance, resource, first.cursor)

        # A push is trusted: the sync is asked for without a look at the queue.
        [request] = second.run_requests
        assert request.job_name == "sync_portals" and request.tags["bitrix24/portals"] == key
        assert request.run_config["ops"]["drain_portals"]["config"]["portals"] == [key]
        assert emu.stats()["http_requests"] == 0, emu.stats()["methods"]

        # A portal's fallback peek (push lost, or none) observes the queue and asks for a sync too.
        polling = resource_for(emu, state_path, peek_interval_s=0.0)
        third = evaluate(instance, polling, second.cursor)
        [request] = third.run_requests
        assert request.job_name == "sync_portals" and request.tags["bitrix24/portals"] == key
        [observation] = third.asset_events  # one for the fleet, not one per portal
        assert observation.asset_key == dg.AssetKey(["bitrix24", "offline_queue"])
        assert isinstance(observation, dg.AssetObservation)
        assert observation.metadata["depth"].value == 1
        assert observation.metadata["portals_with_rows"].value == 1
        assert observation.metadata["busiest"].value == {key: 1}
        called = set(emu.stats()["methods"])
        assert "event.offline.get" not in called
        assert "event.offline.list" in called
        assert len(emu.queue()) == 1, "the sensor must not consume the row"


def test_a_quiet_portal_is_confirmed_current_now_and_then_and_a_busy_one_is_not(
        emu: ThreadEmulator, tmp_path: Path) -> None:
    """An empty queue with no run in flight renews the portal's watermark (its freshness), at most
    every confirm_current_every_s; rows waiting never do: only the sync that loads them may."""
    state_path = tmp_path / "state.sqlite3"
    key = install(emu, state_path)
    resource = Bitrix24Resource(client_id=emu.client_id, client_secret=emu.client_secret,
                                oauth_token_url=f"{emu.url}/oauth/token/", state_store=str(state_path),
                                peek_interval_s=0)
    bind_deal_events(resource, key)
    watermark = dg.AssetKey(["bitrix24", "sync_watermark"])

    def confirmations(result) -> list:
        return [e for e in result.asset_events if isinstance(e, dg.AssetMaterialization)]

    with dg.instance_for_test() as instance:
        first = evaluate(instance, resource)  # adds the partition
        second = evaluate(instance, resource, first.cursor)
        [confirmed] = confirmations(second)
        assert (confirmed.asset_key, confirmed.partition) == (watermark, key)
        assert confirmed.metadata["confirmed_by"].value == "sensor"
        assert confirmations(evaluate(instance, resource, second.cursor)) == []  # not again so soon

        emu.world.portal("default").crm.write("deal", "update", 3, {"TITLE": "changed"}, Origin(user_id=2))
        with open_state_store(state_path) as state:
            [portal_state] = state.sensor_states().values()
            portal_state.confirmed_at = None  # long ago
            state.save_sensor_states([portal_state])
        busy = evaluate(instance, resource, second.cursor)
        assert confirmations(busy) == []
        assert [r.job_name for r in busy.run_requests] == ["sync_portals"]


def test_a_quiet_portal_is_not_confirmed_while_its_full_resync_failed_or_messages_are_parked(
        emu: ThreadEmulator, tmp_path: Path) -> None:
    """An empty queue alone does not make a portal current: a portal whose full resync never completed
    lacks what it was to load, and messages parked in its error lane have not landed. The fleet's
    queue observation says which portals are held back and why."""
    state_path = tmp_path / "state.sqlite3"
    key = install(emu, state_path)
    resource = Bitrix24Resource(client_id=emu.client_id, client_secret=emu.client_secret,
                                oauth_token_url=f"{emu.url}/oauth/token/", state_store=str(state_path),
                                peek_interval_s=0, confirm_current_every_s=0)
    bind_deal_events(resource, key)

    def confirmed(result) -> bool:
        return any(isinstance(e, dg.AssetMaterialization) for e in result.asset_events)

    def held_back(result) -> dict:
        [observation] = [e for e in result.asset_events if isinstance(e, dg.AssetObservation)]
        return observation.metadata["not_confirmed_examples"].value

    with dg.instance_for_test() as instance:
        cursor = evaluate(instance, resource, status=dg.DagsterRunStatus.FAILURE).cursor  # its full resync fails
        for _ in range(RESYNC_ATTEMPTS):  # ... and so does every resync asked for again
            again = evaluate(instance, resource, cursor, status=dg.DagsterRunStatus.FAILURE)
            assert [r.job_name for r in again.run_requests] == ["full_resync_portals"]
            cursor = again.cursor
        second = evaluate(instance, resource, cursor)
        assert second.run_requests == [] and not confirmed(second)
        assert held_back(second) == {key: "its full resync has not completed"}

        # The resync asked again (or a run of it) completes: runs report it to the state store.
        with open_state_store(state_path) as state:
            [portal] = state.portals()
            state.record_progress(key, parked=2, resynced=portal.installed_at.isoformat())
        third = evaluate(instance, resource, second.cursor)
        assert not confirmed(third)
        assert held_back(third) == {key: "2 message(s) parked in the error lane"}

        with open_state_store(state_path) as state:
            state.record_progress(key, parked=0)  # a drain loaded them
        fourth = evaluate(instance, resource, third.cursor)
        assert confirmed(fourth) and held_back(fourth) == {}


def test_a_tick_over_a_thousand_portals_makes_a_bounded_number_of_http_calls(
        emu: ThreadEmulator, tmp_path: Path) -> None:
    state_path = tmp_path / "state.sqlite3"
    tokens = emu.install_tokens()  # every "portal" here is the emulator's default one
    keys = [install(emu, state_path, key=f"portal-{number:04d}.example.com", tokens=tokens)
            for number in range(1000)]
    resource = resource_for(emu, state_path)
    with dg.instance_for_test() as instance:
        first = evaluate(instance, resource)
        assert len(first.run_requests) == 40  # full resyncs of 25 new portals per run, asked once
        with open_state_store(state_path) as state:
            for key in keys[:5]:
                state.record_signal(key)
        emu.reset_stats()
        second = evaluate(instance, resource, first.cursor)
        # The 5 signalled portals are trusted without a peek; 20 due ones are peeked: bounded by the
        # round-robin slice, not by the number of portals (plus one look-up of the plan's features).
        assert emu.stats()["http_requests"] <= POLLS_PER_TICK + 1, emu.stats()["methods"]
        assert [r.tags["bitrix24/portals"] for r in second.run_requests] == [",".join(keys[:5])]
        # Per-portal state lives in the state store; the cursor does not grow with the portals.
        assert len(second.cursor) < 300, second.cursor
        with open_state_store(state_path) as state:
            states = state.sensor_states()
        assert len(states) == 1000 and all(states[key].bootstrapped for key in keys)
        # The 5 launched, then the 20 least recently peeked of the others.
        assert {key for key, portal_state in states.items() if portal_state.polled_at} == {*keys[:5 + POLLS_PER_TICK]}


def test_a_thousand_signalled_portals_wait_for_a_few_big_runs_and_none_is_starved(
        emu: ThreadEmulator, tmp_path: Path) -> None:
    """Every signal at once (a thousand portals changing within one tick): the tick must finish well
    inside Dagster's 60-second limit (it once peeked each portal, timed out, and saved nothing, so every
    later tick timed out on the same signals), and it asks for at most ``sync_runs_in_flight`` runs of
    ``portals_per_run``; the rest wait, and go first once those runs have ended."""
    state_path = tmp_path / "state.sqlite3"
    tokens = emu.install_tokens()
    keys = [install(emu, state_path, key=f"portal-{number:04d}.example.com", tokens=tokens)
            for number in range(1000)]
    resource = resource_for(emu, state_path, portals_per_run=50, sync_runs_in_flight=4)
    with dg.instance_for_test() as instance:
        first = evaluate(instance, resource)  # bootstraps, ended at once
        with open_state_store(state_path) as state:
            for key in keys:
                state.record_signal(key)
        emu.reset_stats()
        started = time.monotonic()
        second = evaluate(instance, resource, first.cursor, status=dg.DagsterRunStatus.STARTED)
        assert time.monotonic() - started < 20
        assert emu.stats()["http_requests"] <= POLLS_PER_TICK + 1
        launched = [r.tags["bitrix24/portals"].split(",") for r in second.run_requests]
        assert [len(group) for group in launched] == [50, 50, 50, 50]

        # While those four are in flight, nothing more is asked; every other portal stays pending.
        third = evaluate(instance, resource, second.cursor)
        assert third.run_requests == []
        with open_state_store(state_path) as state:
            pending = {key for key, portal_state in state.sensor_states().items() if portal_state.pending}
        assert pending == set(keys) - {key for group in launched for key in group}

        # Once they end, the next runs take portals that waited, not the ones just drained.
        for run in instance.get_runs(filters=dg.RunsFilter(job_name="sync_portals")):
            instance.report_run_canceled(run)  # ended (how does not matter to the sensor)
        fourth = evaluate(instance, resource, third.cursor, status=dg.DagsterRunStatus.STARTED)
        again = {key for r in fourth.run_requests for key in r.tags["bitrix24/portals"].split(",")}
        assert len(again) == 200 and again <= pending


def test_a_full_resync_that_ended_without_success_is_asked_again_once(emu: ThreadEmulator, tmp_path: Path) -> None:
    state_path = tmp_path / "state.sqlite3"
    key = install(emu, state_path)
    resource = resource_for(emu, state_path)
    with dg.instance_for_test() as instance:
        first = evaluate(instance, resource)
        instance.add_run(dg.DagsterRun(job_name="full_resync_portals", run_id=make_new_run_id(),
                                       status=dg.DagsterRunStatus.CANCELED, tags={"bitrix24/portals": key}))
        second = evaluate(instance, resource, first.cursor)
        assert [(r.job_name, r.tags["bitrix24/portals"]) for r in second.run_requests] == [("full_resync_portals", key)]
        third = evaluate(instance, resource, second.cursor)
        assert [r.job_name for r in third.run_requests] == []


def test_portals_a_grouped_resync_lists_as_failed_are_asked_again_and_the_others_are_not(
        emu: ThreadEmulator, tmp_path: Path) -> None:
    state_path = tmp_path / "state.sqlite3"
    tokens = emu.install_tokens()
    keys = [install(emu, state_path, key=f"portal-{number}.example.com", tokens=tokens) for number in range(3)]
    resource = resource_for(emu, state_path)
    with dg.instance_for_test() as instance:
        first = evaluate(instance, resource)  # one run for the three
        assert [r.tags["bitrix24/portals"] for r in first.run_requests] == [",".join(keys)]
        instance.add_run(dg.DagsterRun(job_name="full_resync_portals", run_id=make_new_run_id(),
                                       status=dg.DagsterRunStatus.SUCCESS,
                                       tags={"bitrix24/portals": ",".join(keys), "bitrix24/failed_portals": keys[1]}))
        second = evaluate(instance, resource, first.cursor)
        assert [r.tags["bitrix24/portals"] for r in second.run_requests] == [keys[1]]
        assert [r.job_name for r in evaluate(instance, resource, second.cursor).run_requests] == []


def test_a_portal_whose_resync_is_asked_for_gets_no_sync_beside_it_and_a_failed_one_is_asked_again_while_busy(
        emu: ThreadEmulator, tmp_path: Path) -> None:
    """A sync started beside a bootstrap would hold the portal's drain claim while the resync runs;
    and a failed resync must be asked again even while another run drains the portal (the resync
    waits for the claim), else the portal would never be loaded."""
    state_path = tmp_path / "state.sqlite3"
    key = install(emu, state_path)
    resource = resource_for(emu, state_path)
    bind_deal_events(resource, key)
    emu.world.portal("default").crm.write("deal", "update", 3, {"TITLE": "changed"}, Origin(user_id=2))
    with open_state_store(state_path) as state:
        state.record_signal(key)
    with dg.instance_for_test() as instance:
        first = evaluate(instance, resource, status=dg.DagsterRunStatus.FAILURE)
        assert [r.job_name for r in first.run_requests] == ["full_resync_portals"]

        instance.add_run(dg.DagsterRun(job_name="sync_portals", run_id=make_new_run_id(),
                                       status=dg.DagsterRunStatus.STARTED, tags={"bitrix24/portals": key}))
        second = evaluate(instance, resource, first.cursor)
        assert [(r.job_name, r.tags["bitrix24/portals"]) for r in second.run_requests] == [("full_resync_portals", key)]
