"""The entity tables Dagster shows as assets, and which warehouse tables each one covers."""

from __future__ import annotations

import dagster as dg

# asset name -> warehouse table (smart-process types are discovered per portal: items_<entityTypeId>)
ENTITY_ASSETS: dict[str, str] = {
    "deals": "deals",
    "contacts": "contacts",
    "companies": "companies",
    "leads": "leads",
    "activities": "activities",
    "smart_process_items": "items_",
}

DESCRIPTIONS: dict[str, str] = {
    "deals": "CRM deals: one current row per deal, deletes kept as tombstones.",
    "contacts": "CRM contacts with their phones and e-mails.",
    "companies": "CRM companies (client and partner organisations).",
    "leads": "CRM leads: unqualified prospects before they become deals.",
    "activities": "CRM activities: calls, e-mails, meetings and tasks on CRM records.",
    "smart_process_items": "Items of every smart process (one table items_<entityTypeId> per type).",
}

QUEUE_ASSET = dg.AssetKey(["bitrix24", "offline_queue"])


def asset_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["bitrix24", name])


def asset_for_table(table: str) -> str:
    for name, prefix in ENTITY_ASSETS.items():
        if table == prefix or (prefix.endswith("_") and table.startswith(prefix)):
            return name
    raise KeyError(f"no asset covers warehouse table {table!r}")
