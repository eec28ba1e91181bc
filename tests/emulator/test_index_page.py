"""The emulator's HTML index (emulator.index): the page the demo's "Bitrix24 portal" link opens.

It must answer 200 with HTML at ``/_emulator/`` and ``/``, list every portal with its entity counts
and the offline-event queue depth per application and connector, and link to the control API.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from emulator.events import Origin
from emulator.testing import ThreadEmulator


def test_the_index_lists_every_portal_with_entity_counts_and_control_links(
        emu: ThreadEmulator, http: httpx.Client) -> None:
    emu.create_portal("second", counts={"deal": 3, "contact": 2, "company": 1, "lead": 1, "activity": 1,
                                        "item": 1})

    response = http.get(f"{emu.url}/_emulator/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "<h2>Portal default</h2>" in page and "<h2>Portal second</h2>" in page
    second = page[page.index("<h2>Portal second</h2>"):]
    assert '<tr><td>deal</td><td class="n">3</td><td class="n">0</td></tr>' in second
    default_deals = len(emu.truth("deal"))
    assert f'<tr><td>deal</td><td class="n">{default_deals}</td>' in page
    assert 'href="/_emulator/portals/second/queue"' in page
    assert 'href="/_emulator/portals/default/truth/deal"' in page


def test_the_index_shows_the_queue_depth_of_each_application_and_connector(
        emu: ThreadEmulator, tokens: dict[str, Any], http: httpx.Client) -> None:
    bound = http.post(f"{emu.url}/rest/event.bind", json={
        "event": "ONCRMDEALUPDATE", "event_type": "offline", "auth": tokens["access_token"]})
    assert bound.json()["result"] is True
    crm = emu.world.portal("default").crm
    for deal_id in (1, 2, 3):
        crm.write("deal", "update", deal_id, {"TITLE": "edited"}, Origin(user_id=2))

    page = http.get(f"{emu.url}/_emulator/").text

    row = re.search(rf"<tr><td>{re.escape(emu.client_id)}</td><td>\(default\)</td>(.*?)</tr>", page)
    assert row is not None, page
    assert row.group(1) == '<td class="n">3</td><td class="n">0</td><td class="n">0</td>'


def test_the_server_root_serves_the_same_index_and_other_unknown_paths_stay_404(
        emu: ThreadEmulator, http: httpx.Client) -> None:
    root = http.get(f"{emu.url}/")
    assert root.status_code == 200 and "<h1>Bitrix24 emulator</h1>" in root.text
    assert http.get(f"{emu.url}/nothing-here").status_code == 404
