"""The code location `dagster dev` loads (pipelines.definitions): it loads and validates with only
placeholder configuration, and every job, sensor and schedule in it resolves against its assets,
checks and resources, so a broken definition fails here and not at `make demo` or in production.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from pipelines.demo import REPO

# Secrets and paths as an operator's environment would name them, with values that cannot work: the
# definitions must load without touching any of them (EnvVars resolve when a run starts).
PLACEHOLDERS = {
    "B24_CLIENT_ID": "placeholder.client.id",
    "B24_CLIENT_SECRET": "placeholder-secret",
    "B24_STATE_STORE": "/nonexistent/placeholder/state.sqlite3",
    "B24_WAREHOUSE": "/nonexistent/placeholder/warehouse.duckdb",
}


@pytest.fixture
def defs(monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.Definitions]:
    for name in [name for name in os.environ if name.startswith("B24_")]:
        monkeypatch.delenv(name)
    for name, value in PLACEHOLDERS.items():
        monkeypatch.setenv(name, value)
    module = importlib.import_module("pipelines.definitions")
    # Loaded anew under the placeholder environment, whatever an earlier test imported it with.
    yield importlib.reload(module).defs


def test_the_definitions_load_and_validate_with_placeholder_environment(defs: dg.Definitions) -> None:
    dg.Definitions.validate_loadable(defs)


def test_every_job_sensor_and_schedule_resolves(defs: dg.Definitions) -> None:
    jobs = {job.name for job in defs.resolve_all_job_defs()}
    declared_jobs = [job.name for job in defs.jobs or []]
    sensors = [sensor.name for sensor in defs.sensors or []]
    schedules = [schedule.name for schedule in defs.schedules or []]
    assert declared_jobs and sensors and schedules

    for name in declared_jobs:
        assert defs.resolve_job_def(name).name == name
    for name in sensors:
        sensor = defs.resolve_sensor_def(name)
        assert {target.job_name for target in sensor.targets} <= jobs, name
    for name in schedules:
        schedule = defs.resolve_schedule_def(name)
        assert schedule.job_name in jobs, name


def test_every_asset_and_check_is_in_the_resolved_graph(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    keys = set(defs.resolve_all_asset_keys())
    assert keys
    for check_key in graph.asset_check_keys:
        assert check_key.asset_key in keys, check_key


def test_dagster_validates_the_workspace_in_a_clean_placeholder_environment(tmp_path: Path) -> None:
    environment = {name: value for name, value in os.environ.items() if not name.startswith(("B24_", "DAGSTER_"))}
    environment.update(PLACEHOLDERS, DAGSTER_HOME=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stdout + result.stderr


def test_every_asset_is_in_the_bitrix24_group_and_the_watermark_has_a_freshness_policy(
        defs: dg.Definitions) -> None:
    specs = {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}
    assert {key: spec.group_name for key, spec in specs.items() if spec.group_name != "bitrix24"} == {}
    policy = specs["bitrix24/sync_watermark"].freshness_policy
    assert isinstance(policy, dg.FreshnessPolicy)
    # The queue feeds every entity table (lineage), and the checks sit on the assets they judge.
    for name in ("deals", "contacts", "companies", "leads", "activities", "smart_process_items"):
        assert dg.AssetKey(["bitrix24", "offline_queue"]) in {dep.asset_key for dep in specs[f"bitrix24/{name}"].deps}
    checks = {(key.asset_key.to_user_string(), key.name) for key in defs.resolve_asset_graph().asset_check_keys}
    assert ("bitrix24/sync_watermark", "every_portal_current") in checks
    assert ("bitrix24/deals", "value_coercions") in checks and ("bitrix24/deals", "unique_ids") not in checks
