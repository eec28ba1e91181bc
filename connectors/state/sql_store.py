"""The engine-neutral half of the state store: its tables and statements.

SQL is written with ``%(name)s`` parameters and ``{portals}``-style table names; an engine supplies
sessions (one connection and transaction each), time encoding and the table namespace.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime

import orjson

from connectors.state.interface import StateStore
from connectors.state.portal import Portal, PortalProgress, PortalStatus, SensorPortalState, check_portal_key

Run = Callable[[str, Mapping[str, object] | None], list[tuple]]

_PORTAL_COLUMNS = "portal, member_id, domain, client_endpoint, application_token, status, installed_at"
_SENSOR_COLUMNS = "portal, bootstrapped, pending, polled_at, confirmed_at, launches, resync_attempts"


class SqlStateStore(StateStore):
    @abstractmethod
    def _session(self, *, write: bool) -> AbstractContextManager[Run]:
        """A connection in a transaction; ``write`` sessions are serialized between processes."""

    @abstractmethod
    def _table(self, name: str) -> str: ...

    @abstractmethod
    def _encode_time(self, moment: datetime) -> object: ...

    @abstractmethod
    def _decode_time(self, value: object) -> datetime: ...

    # The portal's clock as SQL: the engine's own where it is shared by machines (PostgreSQL),
    # else the ``%(now)s`` parameter (unix seconds) that `reserve_request` always passes.
    _bucket_clock = "%(now)s"
    _greatest = "MAX"  # SQLite's scalar MAX; PostgreSQL's is GREATEST

    def _bucket_session(self) -> AbstractContextManager[Run]:
        """The session for bucket updates; an engine may make it cheaper than `_session`."""
        return self._session(write=True)

    def _serialize_signals(self, run: Run) -> None:
        """Make signal writers take turns where write sessions alone do not (PostgreSQL)."""

    def _schema_statements(self, time_type: str) -> list[str]:
        portals, tokens, signals = self._table("portals"), self._table("tokens"), self._table("signals")
        return [
            f"""CREATE TABLE IF NOT EXISTS {portals} (
                portal TEXT PRIMARY KEY,
                member_id TEXT NOT NULL,
                domain TEXT NOT NULL,
                client_endpoint TEXT NOT NULL,
                application_token TEXT NOT NULL,
                status TEXT NOT NULL,
                installed_at {time_type},
                updated_at {time_type} NOT NULL)""",
            f"CREATE INDEX IF NOT EXISTS portals_member_id ON {portals} (member_id)",
            f"""CREATE TABLE IF NOT EXISTS {tokens} (
                portal TEXT PRIMARY KEY,
                token TEXT NOT NULL,
                updated_at {time_type} NOT NULL)""",
            f"""CREATE TABLE IF NOT EXISTS {signals} (
                portal TEXT PRIMARY KEY,
                latest_at {time_type} NOT NULL,
                seq BIGINT NOT NULL)""",
            f"CREATE INDEX IF NOT EXISTS signals_seq ON {signals} (seq)",
            f"""CREATE TABLE IF NOT EXISTS {self._table("sensor_state")} (
                portal TEXT PRIMARY KEY,
                bootstrapped TEXT,
                pending INTEGER NOT NULL,
                polled_at DOUBLE PRECISION,
                confirmed_at DOUBLE PRECISION,
                launches BIGINT NOT NULL,
                resync_attempts BIGINT NOT NULL)""",
            f"""CREATE TABLE IF NOT EXISTS {self._table("portal_progress")} (
                portal TEXT PRIMARY KEY,
                parked BIGINT,
                resynced TEXT,
                updated_at {time_type} NOT NULL)""",
            f"""CREATE TABLE IF NOT EXISTS {self._table("drain_claims")} (
                portal TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                claimed_at {time_type} NOT NULL)""",
            *self._request_bucket_statements(),
            f"""CREATE TABLE IF NOT EXISTS {self._table("portal_cache")} (
                portal TEXT NOT NULL,
                key TEXT NOT NULL,
                value TEXT NOT NULL,
                fetched_at {time_type} NOT NULL,
                PRIMARY KEY (portal, key))""",
        ]

    def _request_bucket_statements(self) -> list[str]:
        # Unix seconds as a float in both engines: the arithmetic stays one expression.
        return [f"""CREATE TABLE IF NOT EXISTS {self._table("request_buckets")} (
                portal TEXT PRIMARY KEY,
                level DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL)"""]

    # -- portals --------------------------------------------------------------------------------

    def save_portal(self, portal: Portal) -> None:
        with self._session(write=True) as run:
            run(f"""INSERT INTO {self._table("portals")} ({_PORTAL_COLUMNS}, updated_at)
                VALUES (%(portal)s, %(member_id)s, %(domain)s, %(client_endpoint)s,
                        %(application_token)s, %(status)s, %(installed_at)s, %(now)s)
                ON CONFLICT (portal) DO UPDATE SET member_id = excluded.member_id,
                    domain = excluded.domain, client_endpoint = excluded.client_endpoint,
                    application_token = excluded.application_token, status = excluded.status,
                    installed_at = excluded.installed_at, updated_at = excluded.updated_at""", {
                "portal": portal.key, "member_id": portal.member_id, "domain": portal.domain,
                "client_endpoint": portal.client_endpoint, "application_token": portal.application_token,
                "status": PortalStatus(portal.status).value,
                "installed_at": None if portal.installed_at is None else self._encode_time(portal.installed_at),
                "now": self._encode_time(datetime.now(UTC))})

    def portal(self, key: str) -> Portal | None:
        return self._one_portal(f"SELECT {_PORTAL_COLUMNS} FROM {self._table('portals')} "
                                f"WHERE portal = %(value)s", check_portal_key(key))

    def portal_by_member_id(self, member_id: str) -> Portal | None:
        return self._one_portal(
            f"SELECT {_PORTAL_COLUMNS} FROM {self._table('portals')} WHERE member_id = %(value)s "
            f"ORDER BY CASE WHEN status = 'active' THEN 0 ELSE 1 END, installed_at DESC LIMIT 1", member_id)

    def _one_portal(self, sql: str, value: str) -> Portal | None:
        with self._session(write=False) as run:
            rows = run(sql, {"value": value})
        return self._portal(rows[0]) if rows else None

    def portals(self, status: PortalStatus | None = PortalStatus.ACTIVE) -> list[Portal]:
        with self._session(write=False) as run:
            rows = run(f"SELECT {_PORTAL_COLUMNS} FROM {self._table('portals')} "
                       f"WHERE CAST(%(status)s AS TEXT) IS NULL OR status = CAST(%(status)s AS TEXT) "
                       f"ORDER BY portal", {"status": None if status is None else PortalStatus(status).value})
        return [self._portal(row) for row in rows]

    def mark_uninstalled(self, key: str) -> None:
        with self._session(write=True) as run:
            run(f"UPDATE {self._table('portals')} SET status = %(status)s, updated_at = %(now)s "
                f"WHERE portal = %(portal)s", {"status": PortalStatus.UNINSTALLED.value,
                                               "now": self._encode_time(datetime.now(UTC)),
                                               "portal": check_portal_key(key)})

    def _portal(self, row: tuple) -> Portal:
        key, member_id, domain, client_endpoint, application_token, status, installed_at = row
        return Portal(key, member_id, domain, client_endpoint, application_token, PortalStatus(status),
                      None if installed_at is None else self._decode_time(installed_at))

    # -- tokens ---------------------------------------------------------------------------------

    def load_token(self, portal: str) -> dict | None:
        with self._session(write=False) as run:
            rows = run(f"SELECT token FROM {self._table('tokens')} WHERE portal = %(portal)s",
                       {"portal": check_portal_key(portal)})
        return orjson.loads(rows[0][0]) if rows else None

    def save_token(self, portal: str, token: dict) -> None:
        with self._session(write=True) as run:
            run(f"""INSERT INTO {self._table("tokens")} (portal, token, updated_at)
                VALUES (%(portal)s, %(token)s, %(now)s)
                ON CONFLICT (portal) DO UPDATE SET token = excluded.token, updated_at = excluded.updated_at""",
                {"portal": check_portal_key(portal), "token": orjson.dumps(token).decode(),
                 "now": self._encode_time(datetime.now(UTC))})

    def tokens_saved_before(self, cutoff: datetime) -> list[str]:
        with self._session(write=False) as run:
            rows = run(f"""SELECT tokens.portal FROM {self._table("tokens")} AS tokens
                JOIN {self._table("portals")} AS portals ON portals.portal = tokens.portal
                WHERE portals.status = %(active)s AND tokens.updated_at < %(cutoff)s
                ORDER BY tokens.updated_at, tokens.portal""",
                {"active": PortalStatus.ACTIVE.value, "cutoff": self._encode_time(cutoff)})
        return [row[0] for row in rows]

    # -- signals --------------------------------------------------------------------------------

    def record_signal(self, portal: str, received_at: datetime | None = None) -> None:
        at = self._encode_time(received_at or datetime.now(UTC))
        signals = self._table("signals")
        # Write sessions are serialized, so the sequence grows in commit order: a reader that saw
        # seq N has seen every signal up to N, and its cursor never skips one committed later.
        with self._session(write=True) as run:
            self._serialize_signals(run)
            run(f"""INSERT INTO {signals} AS current (portal, latest_at, seq)
                VALUES (%(portal)s, %(at)s, (SELECT COALESCE(MAX(seq), 0) + 1 FROM {signals}))
                ON CONFLICT (portal) DO UPDATE SET seq = excluded.seq,
                    latest_at = CASE WHEN excluded.latest_at > current.latest_at
                                     THEN excluded.latest_at ELSE current.latest_at END""",
                {"portal": check_portal_key(portal), "at": at})

    def signals_since(self, cursor: int | None) -> tuple[dict[str, datetime], int]:
        with self._session(write=False) as run:
            rows = run(f"SELECT portal, latest_at, seq FROM {self._table('signals')} "
                       f"WHERE seq > %(cursor)s ORDER BY seq", {"cursor": int(cursor or 0)})
        signalled = {portal: self._decode_time(latest_at) for portal, latest_at, _ in rows}
        return signalled, max((int(seq) for *_, seq in rows), default=int(cursor or 0))

    # -- the sensor's per-portal state ------------------------------------------------------------

    def sensor_states(self) -> dict[str, SensorPortalState]:
        with self._session(write=False) as run:
            rows = run(f"SELECT {_SENSOR_COLUMNS} FROM {self._table('sensor_state')}", None)
        return {row[0]: SensorPortalState(row[0], row[1], bool(row[2]), row[3], row[4], int(row[5]), int(row[6]))
                for row in rows}

    def save_sensor_states(self, states: list[SensorPortalState]) -> None:
        if not states:
            return
        with self._session(write=True) as run:
            for state in states:
                run(f"""INSERT INTO {self._table("sensor_state")} ({_SENSOR_COLUMNS})
                    VALUES (%(portal)s, %(bootstrapped)s, %(pending)s, %(polled_at)s, %(confirmed_at)s,
                            %(launches)s, %(resync_attempts)s)
                    ON CONFLICT (portal) DO UPDATE SET bootstrapped = excluded.bootstrapped,
                        pending = excluded.pending, polled_at = excluded.polled_at,
                        confirmed_at = excluded.confirmed_at, launches = excluded.launches,
                        resync_attempts = excluded.resync_attempts""", {
                    "portal": check_portal_key(state.portal), "bootstrapped": state.bootstrapped,
                    "pending": int(state.pending), "polled_at": state.polled_at,
                    "confirmed_at": state.confirmed_at, "launches": state.launches,
                    "resync_attempts": state.resync_attempts})

    def forget_sensor_states(self, portals: list[str]) -> None:
        with self._session(write=True) as run:
            for portal in portals:
                run(f"DELETE FROM {self._table('sensor_state')} WHERE portal = %(portal)s", {"portal": portal})

    # -- what runs report about each portal ---------------------------------------------------------

    def record_progress(self, portal: str, *, parked: int | None = None, resynced: str | None = None) -> None:
        with self._session(write=True) as run:
            run(f"""INSERT INTO {self._table("portal_progress")} AS progress (portal, parked, resynced, updated_at)
                VALUES (%(portal)s, %(parked)s, %(resynced)s, %(now)s)
                ON CONFLICT (portal) DO UPDATE SET
                    parked = COALESCE(excluded.parked, progress.parked),
                    resynced = COALESCE(excluded.resynced, progress.resynced),
                    updated_at = excluded.updated_at""", {
                "portal": check_portal_key(portal), "parked": parked, "resynced": resynced,
                "now": self._encode_time(datetime.now(UTC))})

    def progress(self) -> dict[str, PortalProgress]:
        with self._session(write=False) as run:
            rows = run(f"SELECT portal, parked, resynced FROM {self._table('portal_progress')}", None)
        return {row[0]: PortalProgress(row[0], None if row[1] is None else int(row[1]), row[2]) for row in rows}

    # -- drain claims -------------------------------------------------------------------------------

    def claim_drain(self, portal: str, owner: str, owner_is_alive: Callable[[str], bool]) -> bool:
        claims = self._table("drain_claims")
        params = {"portal": check_portal_key(portal), "owner": owner, "now": self._encode_time(datetime.now(UTC))}
        with self._session(write=True) as run:
            run(f"INSERT INTO {claims} (portal, owner, claimed_at) VALUES (%(portal)s, %(owner)s, %(now)s) "
                f"ON CONFLICT (portal) DO NOTHING", params)
            rows = run(f"SELECT owner FROM {claims} WHERE portal = %(portal)s", params)
        holder = rows[0][0] if rows else None
        if holder == owner:
            return True
        if holder is None or owner_is_alive(holder):
            return False
        # The holder is gone: take over only if nobody else did meanwhile (compare and set).
        with self._session(write=True) as run:
            taken = run(f"UPDATE {claims} SET owner = %(owner)s, claimed_at = %(now)s "
                        f"WHERE portal = %(portal)s AND owner = %(holder)s RETURNING owner",
                        {**params, "holder": holder})
        return bool(taken)

    def release_drain(self, portal: str, owner: str) -> None:
        with self._session(write=True) as run:
            run(f"DELETE FROM {self._table('drain_claims')} WHERE portal = %(portal)s AND owner = %(owner)s",
                {"portal": check_portal_key(portal), "owner": owner})

    # -- request buckets ------------------------------------------------------------------------

    def reserve_request(self, portal: str, *, capacity: float, drain_per_s: float) -> float:
        level = self._update_bucket(portal, take=1.0, floor=0.0, drain_per_s=drain_per_s)
        return max(0.0, (level - capacity) / drain_per_s)

    def saturate_requests(self, portal: str, *, capacity: float, drain_per_s: float) -> None:
        self._update_bucket(portal, take=0.0, floor=capacity, drain_per_s=drain_per_s)

    def _update_bucket(self, portal: str, *, take: float, floor: float, drain_per_s: float) -> float:
        """Drain the bucket to now, add ``take``, raise it to ``floor``: one statement, one row.

        The row lock of the upsert makes concurrent callers queue on this portal only; a clock
        that went backwards (another machine, another transaction's earlier reading) drains nothing.
        """
        if not drain_per_s > 0:
            raise ValueError(f"drain_per_s must be positive, got {drain_per_s!r}")
        greatest, buckets = self._greatest, self._table("request_buckets")
        with self._bucket_session() as run:
            rows = run(f"""INSERT INTO {buckets} AS bucket (portal, level, updated_at)
                VALUES (%(portal)s, %(initial)s, {self._bucket_clock})
                ON CONFLICT (portal) DO UPDATE SET
                    level = {greatest}({greatest}(bucket.level - {greatest}(
                        excluded.updated_at - bucket.updated_at, 0) * %(drain)s, 0) + %(take)s, %(floor)s),
                    updated_at = {greatest}(bucket.updated_at, excluded.updated_at)
                RETURNING level""", {
                "portal": check_portal_key(portal), "initial": max(take, floor), "take": take,
                "floor": floor, "drain": float(drain_per_s), "now": time.time()})
        return float(rows[0][0])


    # -- portal cache ---------------------------------------------------------------------------

    def cached(self, portal: str, key: str) -> tuple[object, datetime] | None:
        with self._session(write=False) as run:
            rows = run(f"SELECT value, fetched_at FROM {self._table('portal_cache')} "
                       f"WHERE portal = %(portal)s AND key = %(key)s", {"portal": check_portal_key(portal), "key": key})
        return (orjson.loads(rows[0][0]), self._decode_time(rows[0][1])) if rows else None

    def cache(self, portal: str, key: str, value: object, fetched_at: datetime | None = None) -> None:
        with self._session(write=True) as run:
            run(f"""INSERT INTO {self._table("portal_cache")} (portal, key, value, fetched_at)
                VALUES (%(portal)s, %(key)s, %(value)s, %(at)s)
                ON CONFLICT (portal, key) DO UPDATE SET value = excluded.value, fetched_at = excluded.fetched_at""",
                {"portal": check_portal_key(portal), "key": key, "value": orjson.dumps(value).decode(),
                 "at": self._encode_time(fetched_at or datetime.now(UTC))})

    def forget_cached(self, portal: str, keys: Iterable[str] | None = None) -> None:
        with self._session(write=True) as run:
            if keys is None:
                run(f"DELETE FROM {self._table('portal_cache')} WHERE portal = %(portal)s",
                    {"portal": check_portal_key(portal)})
                return
            for key in dict.fromkeys(keys):
                run(f"DELETE FROM {self._table('portal_cache')} WHERE portal = %(portal)s AND key = %(key)s",
                    {"portal": check_portal_key(portal), "key": key})
