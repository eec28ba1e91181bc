"""The file token store: private files, atomic replacement, one file per portal (real files).

A rotated refresh token that is not safely on disk is a portal that needs a human to re-authorize
(facts §7.2), so the store writes a temporary file and renames it over the old one, and nobody but
the owner can read it.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from connectors.bitrix24.auth import FileTokenStore


def token(n: int) -> dict:
    return {"access_token": f"access-{n:06d}", "refresh_token": f"refresh-{n:06d}", "expires_in": 3600,
            "client_endpoint": "https://portal.example/rest/", "member_id": "m1"}


def test_a_saved_token_loads_back_and_is_private(tmp_path: Path) -> None:
    store = FileTokenStore(tmp_path / "tokens")
    assert store.load("portal.example") is None
    store.save("portal.example", token(1))
    assert store.load("portal.example") == token(1)
    assert stat.S_IMODE(os.stat(store.path("portal.example")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "tokens").st_mode) == 0o700


def test_saving_replaces_atomically_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = FileTokenStore(tmp_path)
    stop = threading.Event()
    seen: list[dict | None] = []

    def reader() -> None:
        while not stop.is_set():
            seen.append(store.load("p"))

    store.save("p", token(0))
    thread = threading.Thread(target=reader)
    thread.start()
    for n in range(1, 200):
        store.save("p", token(n))
    stop.set()
    thread.join()
    assert all(entry is not None and entry["access_token"].startswith("access-") for entry in seen)
    assert store.load("p") == token(199)
    assert [path.name for path in tmp_path.iterdir()] == [store.path("p").name]


def test_portals_that_sanitize_alike_get_distinct_files(tmp_path: Path) -> None:
    store = FileTokenStore(tmp_path)
    store.save("a/b", token(1))
    store.save("a_b", token(2))
    assert store.path("a/b") != store.path("a_b")
    assert store.load("a/b") == token(1) and store.load("a_b") == token(2)
