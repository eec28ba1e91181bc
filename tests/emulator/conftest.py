"""Fixtures for emulator tests: a live emulator over loopback (small data, one per test)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from emulator.testing import ThreadEmulator, run_emulator


@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    """One plain httpx client for the session (building a client per request costs ~30 ms)."""
    with httpx.Client(timeout=30) as client:
        yield client


@pytest.fixture
def emu() -> Iterator[ThreadEmulator]:
    """An emulator with limits off, so tests may call as fast as they like."""
    with run_emulator(limits=False) as running:
        yield running


@pytest.fixture
def limited_emu() -> Iterator[ThreadEmulator]:
    """An emulator with the cloud limits on (burst 50, 2/s; 480 s operating budget)."""
    with run_emulator(limits=True) as running:
        yield running


@pytest.fixture
def tokens(emu: ThreadEmulator) -> dict[str, Any]:
    """A fresh OAuth token pair of the default app on `emu` (admin user 1)."""
    return emu.install_tokens()
