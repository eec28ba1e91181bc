"""Background CRM activity: users adding, editing and deleting records at a steady rate.

`ActivityGenerator` writes through `CrmStore.write` from its own thread, one write per
``portal.lock`` acquisition, as a random non-app user (``client_id=None``), so every write reaches
every app's offline queue like a change made in the Bitrix24 UI (facts §2.12).

``mix`` weights what happens: keys are ``"<entity>.<op>"`` (``"deal.update"``, ``"item:128.add"``)
or a bare entity (``"deal"``), which spreads its weight over add/update/delete as 15/80/5.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING

from emulator.crm.entities import ADD, DELETE, OPERATIONS, UPDATE
from emulator.crm.origin import Origin
from emulator.crm.seed import Draw, Seeder
from emulator.crm.store import CrmStore, EntityNotFound

if TYPE_CHECKING:
    from emulator.portal import Portal

DEFAULT_MIX: dict[str, float] = {
    "deal": 0.35,
    "contact": 0.15,
    "company": 0.05,
    "lead": 0.1,
    "activity": 0.25,
    "item": 0.1,  # spread over every smart-process type
}
OPERATION_SPLIT = ((ADD, 0.15), (UPDATE, 0.80), (DELETE, 0.05))
# A burst after a stall (e.g. a long request holding the lock) is capped, not replayed in full.
MAX_CATCH_UP = 1_000


class ActivityGenerator:
    def __init__(self, portal: Portal, rate_per_s: float, mix: dict[str, float] | None = None,
                 seed: int | None = None) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self.portal = portal
        self.rate_per_s = rate_per_s
        store: CrmStore = portal.crm
        self.store = store
        self._rng = random.Random(seed)
        self._draw = Draw(self._rng)
        self._choices, self._weights = self._plan(mix or DEFAULT_MIX)
        self._counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(OPERATIONS, 0))
        self._counts_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Fired users make no more changes (they still own their old records).
        self._users = sorted(user.id for user in portal.users.values() if user.active) or [1]
        # New rows and edits use the seeding vocabulary, so generated data looks like seeded data.
        self._seeder = Seeder(store, 0 if seed is None else seed, self._users)

    def _plan(self, mix: dict[str, float]) -> tuple[list[tuple[str, str]], list[float]]:
        entities = self.store.entities()
        smart_processes = [name for name in entities if name.startswith("item:")]
        choices: list[tuple[str, str]] = []
        weights: list[float] = []
        for key, weight in mix.items():
            entity, _, operation = key.partition(".")
            targets = smart_processes if entity == "item" else [entity]
            for target in targets:
                self.store.table(target)  # unknown entities fail here, not in the thread
                split = [(operation, 1.0)] if operation else OPERATION_SPLIT
                for op, share in split:
                    if op not in OPERATIONS:
                        raise ValueError(f"unknown operation in mix key {key!r}")
                    choices.append((target, op))
                    weights.append(weight * share / len(targets))
        if not choices or sum(weights) <= 0:
            raise ValueError("the mix selects no writes")
        return choices, weights

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"activity-{self.portal.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def stats(self) -> dict[str, dict[str, int]]:
        """Writes done so far: ``{"deal": {"add": n, "update": n, "delete": n}, ...}``."""
        with self._counts_lock:
            return {entity: dict(counts) for entity, counts in self._counts.items()}

    def _run(self) -> None:
        started = time.monotonic()
        done = 0
        while not self._stop.is_set():
            due = int((time.monotonic() - started) * self.rate_per_s) - done
            if due <= 0:
                self._stop.wait((done + 1) / self.rate_per_s - (time.monotonic() - started))
                continue
            if due > MAX_CATCH_UP:
                done += due - MAX_CATCH_UP
                due = MAX_CATCH_UP
            for _ in range(due):
                if self._stop.is_set():
                    return
                self._write_one()
            done += due

    def _write_one(self) -> None:
        entity, operation = self._rng.choices(self._choices, self._weights)[0]
        origin = Origin(user_id=self._draw.pick(self._users), client_id=None, auth_connector="")
        with self.portal.lock:
            table = self.store.table(entity)
            if operation != ADD and not table.ids:
                operation = ADD
            seeder = self._seeder
            try:
                if operation == ADD:
                    self.store.write(entity, ADD, None, seeder.new_fields(self._draw, entity), origin)
                else:
                    entity_id = self._draw.pick(table.ids)
                    fields = seeder.changes(self._draw, entity, entity_id) if operation == UPDATE else None
                    self.store.write(entity, operation, entity_id, fields, origin)
            except EntityNotFound:
                return
        with self._counts_lock:
            self._counts[entity][operation] += 1
