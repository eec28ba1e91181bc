"""A small HTML page listing the emulator's portals: what the demo's "Bitrix24 portal" link opens.

Served at ``/_emulator/`` (and at the root ``/``, where a browser lands first): per portal its plan,
REST endpoint, installed apps, CRM entity counts (live and deleted), the offline-event queue depth per
application and connector, whether simulated users are active, and links to the control API's JSON.
"""

from __future__ import annotations

from collections import Counter
from html import escape
from typing import Any

from emulator.control import PREFIX
from emulator.portal import Portal
from emulator.world import World

_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:.5em 0 1em}"
          "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}td.n{text-align:right}")


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{cell}</td>' if isinstance(cell, int) else f"<td>{escape(str(cell))}</td>"
                         for cell in row) + "</tr>"
        for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _link(url: str, text: str) -> str:
    return f'<a href="{escape(url)}">{escape(text)}</a>'


def _portal_section(portal: Portal) -> str:
    control = f"{PREFIX}/portals/{portal.name}"
    with portal.lock:
        entities = [[key, len(table.rows), len(table.deleted)] for key, table in portal.crm.tables.items()]
        queue_rows = portal.events.queue_rows()
        apps = sorted(portal.installations)
    depth: Counter[tuple[str, str]] = Counter()
    errors: Counter[tuple[str, str]] = Counter()
    reserved: Counter[tuple[str, str]] = Counter()
    for row in queue_rows:
        key = (row["APP_ID"], row["CONNECTOR_ID"])
        depth[key] += 1
        errors[key] += str(row["ERROR"]) == "1"
        reserved[key] += bool(row["PROCESS_ID"])
    queues = [[app or "(none)", connector or "(default)", depth[app, connector], errors[app, connector],
               reserved[app, connector]] for app, connector in sorted(depth)]
    activity = portal.activity
    active = f"{activity.rate_per_s:g} changes/s" if activity is not None else "off"
    links = " · ".join(_link(url, text) for url, text in [
        (control, "settings"), (f"{control}/queue", "queue rows"), (f"{control}/stats", "call stats"),
        (f"{control}/activity", "activity"), (f"{control}/faults", "faults"),
        *((f"{control}/truth/{key}", f"truth: {key}") for key, _, _ in entities),
    ])
    return (
        f"<h2>Portal {escape(portal.name)}</h2>"
        f"<p>plan <b>{escape(portal.plan)}</b> · REST {escape(portal.client_endpoint)} · member_id "
        f"<code>{escape(portal.member_id)}</code> · apps installed: {escape(', '.join(apps) or 'none')}"
        f" · simulated users: {escape(active)}</p>"
        f"<h3>CRM entities</h3>{_table(['entity', 'records', 'deleted'], entities)}"
        f"<h3>Offline-event queues</h3>"
        f"{_table(['application', 'connector', 'rows', 'in error lane', 'reserved'], queues)}"
        f"<p>{links}</p>"
    )


def render_index(world: World) -> bytes:
    """The index page as UTF-8 HTML bytes; reads every portal under its lock."""
    sections = "".join(_portal_section(portal) for portal in world.portals.values())
    links = " · ".join(_link(url, text) for url, text in [
        (f"{PREFIX}/portals", "portals (JSON)"), (f"{PREFIX}/oauth", "OAuth server"),
        (f"{PREFIX}/health", "health")])
    return (
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Bitrix24 emulator</title>"
        f"<style>{_STYLE}</style></head><body><h1>Bitrix24 emulator</h1>"
        f"<p>{len(world.portals)} portal(s) · control API: {links}</p>{sections}</body></html>"
    ).encode()
