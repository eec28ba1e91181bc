"""Shared set-up of the Dagster tests: a Dagster instance in the test's directory, and an emulator
portal installed the way the receiver records an install (portal row + token pair in the state store)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from connectors.receiver import portal_key
from connectors.state import Portal, open_state_store
from emulator.testing import ThreadEmulator, run_emulator
from pipelines.resources import Bitrix24Resource, WarehouseResource


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as test_instance:
        yield test_instance


@pytest.fixture
def emu() -> Iterator[ThreadEmulator]:
    """The emulator with its seeded default portal, no rate limits (a test file may define its own)."""
    with run_emulator(limits=False) as running:
        yield running


def install_default_portal(emu: ThreadEmulator, state_path: Path) -> str:
    """The emulator's default portal saved in the state store at ``state_path``; returns its key."""
    tokens = emu.install_tokens()
    key = portal_key(tokens["client_endpoint"])
    with open_state_store(state_path) as state:
        state.save_portal(Portal(key=key, member_id="member", domain="emulator",
                                 client_endpoint=tokens["client_endpoint"], application_token="app-token",
                                 installed_at=datetime.now(UTC)))
        state.save_token(key, tokens)
    return key


def resources_for(emu: ThreadEmulator, state_path: Path, warehouse: Path | str) -> dict[str, dg.ConfigurableResource]:
    """The product's two resources over this emulator, state store and warehouse."""
    return {"bitrix24": Bitrix24Resource(client_id=emu.client_id, client_secret=emu.client_secret,
                                         oauth_token_url=emu.token_url, state_store=str(state_path)),
            "warehouse": WarehouseResource(url=str(warehouse))}


def install_portals(emu: ThreadEmulator, state_path: Path, names: list[str], counts: dict[str, int]) -> dict[str, str]:
    """``{emulator portal name: portal key}``: each portal created with ``counts`` objects of each kind,
    the app installed on it and saved as the receiver would."""
    keys = {}
    for number, name in enumerate(names):
        emu.create_portal(name, plan="professional", seed=number, counts=counts, smart_process_types=0)
        tokens = emu.install(emu.client_id, portal=name)
        key = keys[name] = portal_key(tokens["client_endpoint"])
        with open_state_store(state_path) as state:
            state.save_portal(Portal(key=key, member_id=tokens["member_id"], domain=tokens["domain"],
                                     client_endpoint=tokens["client_endpoint"],
                                     application_token=tokens["application_token"], installed_at=datetime.now(UTC)))
            state.save_token(key, tokens)
    return keys
