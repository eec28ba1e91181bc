"""The CRM half of a portal: entities, their REST methods, seeded data and ground truth.

Importing this package registers the ``crm.*`` methods. `attach` gives a portal its `CrmStore`
(``portal.crm``) filled with deterministic synthetic data; call it before `emulator.events.attach`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emulator.crm import item_methods, legacy_methods, product_rows, reference_methods
from emulator.crm.clock import PortalClock
from emulator.crm.reference import FIRED_USERS, user_departments
from emulator.crm.seed import Seeder, seed_portal
from emulator.crm.store import CrmStore, EntityNotFound, InvalidFieldValue, UnknownEntity

if TYPE_CHECKING:
    from emulator.portal import Portal

__all__ = [
    "CrmStore",
    "EntityNotFound",
    "InvalidFieldValue",
    "PortalClock",
    "Seeder",
    "UnknownEntity",
    "attach",
    "item_methods",
    "legacy_methods",
    "product_rows",
    "reference_methods",
]


def attach(portal: Portal, seed: int, counts: dict[str, int], smart_process_types: int | None = None,
           clock: PortalClock | None = None) -> CrmStore:
    """Build ``portal.crm`` and seed it.

    `counts` keys: ``deal``, ``contact``, ``company``, ``lead``, ``activity``, ``item`` (items per smart
    process type); the number of smart-process types comes from `smart_process_types`, else
    ``counts["smart_process_types"]``, else 1."""
    if smart_process_types is None:
        smart_process_types = counts.get("smart_process_types", 1)
    store = CrmStore(portal, clock)
    portal.crm = store
    for user in portal.users.values():
        if not user.departments:
            user.departments = user_departments(user.id)
        if user.id in FIRED_USERS:
            user.active = False
    seed_portal(store, seed, counts, smart_process_types, sorted(portal.users))
    store.product_rows = product_rows.ProductRows()
    store.product_rows.seed(list(store.table("deal").ids), seed)
    return store
