"""The deployment configuration under deploy/, checked as far as this machine allows.

No Docker engine, Kubernetes cluster or Helm binary runs here, so nothing is deployed. What is
checked: every file parses; every Dagster instance file passes Dagster's own instance schema and its
configurable classes' schemas (run launcher, run coordinator, PostgreSQL storage) from the installed
dagster, dagster-postgres, dagster-docker and dagster-k8s; the instances with PostgreSQL storage
load against the real server and `dagster definitions validate` passes with each; the Helm values'
instance-shaped parts, rendered the way the chart's templates render them, pass the same schemas;
and the files agree with each other (paths, environment variables, images, ports).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster_docker import DockerRunLauncher
from dagster_k8s import K8sRunLauncher
from dagster_postgres import DagsterPostgresStorage
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from pipelines.demo import REPO
from tests.conftest import PG_DSN

DEPLOY = REPO / "deploy"
INSTANCE_FILES = [DEPLOY / "instance" / "dagster.duckdb.yaml", DEPLOY / "instance" / "dagster.postgres.yaml",
                  DEPLOY / "docker" / "dagster.yaml", DEPLOY / "celery" / "dagster.yaml"]
POSTGRES_INSTANCES = INSTANCE_FILES[1:]
# The environment variables the instance files read (values only need to be well-formed here).
INSTANCE_ENV = {"DAGSTER_PG_URL": "postgresql://dagster@127.0.0.1:5432/dagster", "DAGSTER_PG_USERNAME": "dagster",
                "DAGSTER_PG_PASSWORD": "secret", "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_DB": "dagster"}
# What the code location reads from its environment (pipelines/definitions.py): secrets via EnvVar.
CODE_LOCATION_ENV = {"B24_CLIENT_ID", "B24_CLIENT_SECRET", "B24_STATE_STORE", "B24_WAREHOUSE"}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _valid(config_type, value: dict) -> None:
    result = process_config(config_type, value)
    assert result.success, [error.message for error in result.errors]


def test_every_yaml_file_under_deploy_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 8
    for path in files:
        assert isinstance(_load(path), dict), path


@pytest.mark.parametrize("path", INSTANCE_FILES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_instance_files_pass_dagsters_schemas(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in INSTANCE_ENV.items():
        monkeypatch.setenv(key, value)
    shutil.copy(path, tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))  # raises DagsterInvalidConfigError

    if "storage" in config:
        _valid(DagsterPostgresStorage.config_type(), config["storage"]["postgres"])
    for section, classes in (("run_launcher", {"DockerRunLauncher": DockerRunLauncher}),
                             ("run_coordinator", {"QueuedRunCoordinator": QueuedRunCoordinator})):
        if section in config:
            _valid(classes[config[section]["class"]].config_type(), config[section].get("config") or {})
    assert config["concurrency"]["pools"]["default_limit"] == (1 if "duckdb" in path.name else 8)


def test_the_duckdb_instance_is_the_products_default() -> None:
    """pipelines/dagster.yaml (what `make demo` and the e2e tests use) keeps one writer per file."""
    default, duckdb = _load(REPO / "pipelines" / "dagster.yaml"), _load(INSTANCE_FILES[0])
    assert default["concurrency"] == duckdb["concurrency"]


@pytest.mark.parametrize("path", INSTANCE_FILES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_instance_keeps_the_products_run_settings(path: Path) -> None:
    """What the product relies on beyond concurrency, as pipelines/dagster.yaml sets it: freshness
    policies evaluated, hung runs failed (they would count against sync_runs_in_flight and hold their
    pool slot forever), retries, the one-second dequeue, one run per portal."""
    default, instance = _load(REPO / "pipelines" / "dagster.yaml"), _load(path)
    assert instance["freshness"] == default["freshness"] == {"enabled": True}
    assert instance["run_monitoring"] == default["run_monitoring"]
    assert instance["run_retries"] == default["run_retries"]
    assert instance["run_coordinator"]["config"] == default["run_coordinator"]["config"]
    assert instance["concurrency"]["runs"]["tag_concurrency_limits"] == \
        default["concurrency"]["runs"]["tag_concurrency_limits"]


@pytest.fixture(scope="module")
def deploy_database() -> Iterator[dict[str, str]]:
    """A database of its own for the instances' PostgreSQL storage; the variables pointing at it."""
    from tests.conftest import ensure_test_database

    problem = ensure_test_database(PG_DSN)
    if problem is not None:
        pytest.skip(problem) if os.environ.get("CI", "").lower() not in ("true", "1", "yes") else pytest.fail(problem)
    name = f"dagster_deploy_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_DSN, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = conninfo_to_dict(PG_DSN)
    host, port, user = params.get("host", "127.0.0.1"), str(params.get("port", 5432)), params.get("user", "postgres")
    yield {"DAGSTER_PG_URL": f"postgresql+psycopg2://{user}@{host}:{port}/{name}", "DAGSTER_PG_USERNAME": user,
           "DAGSTER_PG_PASSWORD": params.get("password", ""), "DAGSTER_PG_HOST": host, "DAGSTER_PG_DB": name}
    with psycopg.connect(PG_DSN, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.postgres
@pytest.mark.parametrize("path", POSTGRES_INSTANCES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_postgres_instances_load_and_the_definitions_validate_with_them(
        path: Path, deploy_database: dict[str, str], tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(path, home / "dagster.yaml")
    env = {**os.environ, **deploy_database, "DAGSTER_HOME": str(home)}

    # The instance itself, with its storage on the real server and its run launcher built.
    probe = ("import dagster as dg\n"
             "with dg.DagsterInstance.get() as instance:\n"
             "    assert type(instance.run_storage).__name__ == 'PostgresRunStorage', instance.run_storage\n"
             "    print(type(instance.run_launcher).__name__, instance.get_concurrency_config().pool_config"
             ".default_pool_limit)\n")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    launcher = (_load(path).get("run_launcher") or {}).get("class", "DefaultRunLauncher")
    assert loaded.stdout.split() == [launcher, "8"]

    validated = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert validated.returncode == 0, (validated.stdout + validated.stderr)[-3000:]


# --- Docker ---------------------------------------------------------------------------------------


def test_the_compose_file_and_the_image_agree() -> None:
    compose = _load(DEPLOY / "docker" / "docker-compose.yaml")
    instance = _load(DEPLOY / "docker" / "dagster.yaml")
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    services = compose["services"]
    assert set(services) >= {"postgres", "code", "webserver", "daemon", "receiver"}

    build = services["code"]["build"]
    assert (DEPLOY / "docker" / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "docker" / "Dockerfile"
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.MULTILINE):
        for item in source.split():
            assert (REPO / item).exists(), f"Dockerfile copies {item}, which does not exist"

    # The webserver and the daemon find the code location where it listens.
    [location] = _load(DEPLOY / "docker" / "workspace.yaml")["load_from"]
    assert location["grpc_server"]["host"] == "code"
    assert str(location["grpc_server"]["port"]) in services["code"]["command"]

    # Runs start from the code location's image, on the compose network, with the variables they need.
    launcher = instance["run_launcher"]["config"]
    assert services["code"]["environment"]["DAGSTER_CURRENT_IMAGE"] == services["code"]["image"]
    assert launcher["network"] == compose["networks"]["default"]["name"]
    daemon_env = set(services["daemon"]["environment"]) | {"B24_CLIENT_ID", "B24_CLIENT_SECRET"}  # from .env
    assert set(launcher["env_vars"]) <= daemon_env
    assert set(launcher["env_vars"]) >= CODE_LOCATION_ENV
    storage_volume = launcher["container_kwargs"]["volumes"][0].split(":")[0]
    assert compose["volumes"]["dagster-storage"]["name"] == storage_volume
    example_env = (DEPLOY / "docker" / "example.env").read_text()
    for key in ("POSTGRES_PASSWORD", "B24_CLIENT_ID", "B24_CLIENT_SECRET", "B24_PUBLIC_URL"):
        assert re.search(rf"^{key}=$", example_env, flags=re.MULTILINE), key


# --- Kubernetes -----------------------------------------------------------------------------------


def _chart_instance_parts(values: dict) -> dict:
    """The instance config the Dagster chart renders from ``values`` (templates/helpers/instance/*.tpl),
    for the sections these values set."""
    postgres = values["postgresql"]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    k8s_config = {re.sub(r"([A-Z])", r"_\1", key).lower(): value for key, value in launcher["runK8sConfig"].items()}
    concurrency = values["concurrency"]
    return {
        "storage": {"postgres_db": {
            "username": postgres["postgresqlUsername"], "password": {"env": "DAGSTER_PG_PASSWORD"},
            "hostname": postgres["postgresqlHost"], "db_name": postgres["postgresqlDatabase"],
            "port": postgres["service"]["port"], "params": postgres["postgresqlParams"],
            "scheme": postgres["postgresqlScheme"]}},
        "run_launcher": {
            "load_incluster_config": launcher["loadInclusterConfig"], "job_namespace": "dagster",
            "image_pull_policy": launcher["imagePullPolicy"], "service_account_name": "dagster",
            "dagster_home": {"env": "DAGSTER_HOME"}, "instance_config_map": {"env": "DAGSTER_K8S_INSTANCE_CONFIG_MAP"},
            "postgres_password_secret": {"env": "DAGSTER_K8S_PG_PASSWORD_SECRET"},
            "env_config_maps": [{"env": "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP"}],
            "env_secrets": [secret["name"] for secret in launcher["envSecrets"]],
            "run_k8s_config": k8s_config},
        "concurrency": {
            "runs": {"max_concurrent_runs": concurrency["runs"]["maxConcurrentRuns"],
                     "tag_concurrency_limits": concurrency["runs"]["tagConcurrencyLimits"]},
            "pools": {"default_limit": concurrency["pools"]["defaultLimit"]}},
        "run_retries": {"enabled": True, "max_retries": values["dagsterDaemon"]["runRetries"]["maxRetries"]},
    }


def test_the_helm_values_render_to_a_valid_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = _load(DEPLOY / "k8s" / "values.yaml")
    parts = _chart_instance_parts(values)
    for key, value in {**INSTANCE_ENV, "DAGSTER_HOME": "/opt/dagster/dagster_home",
                       "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "dagster-instance",
                       "DAGSTER_K8S_PG_PASSWORD_SECRET": "dagster-postgresql-secret",
                       "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP": "dagster-pipeline-env"}.items():
        monkeypatch.setenv(key, value)

    _valid(DagsterPostgresStorage.config_type(), parts["storage"])
    _valid(K8sRunLauncher.config_type(), parts["run_launcher"])
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump({
        "run_coordinator": {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"},
        "concurrency": parts["concurrency"], "run_retries": parts["run_retries"]}))
    dagster_instance_config(str(tmp_path))

    # The code location the chart starts is the one the tests load, from the image's package.
    [deployment] = values["dagster-user-deployments"]["deployments"]
    args = deployment["dagsterApiGrpcArgs"]
    assert args[:1] == ["--module-name"]
    module = __import__(args[1], fromlist=["defs"])
    dg.Definitions.validate_loadable(module.defs)
    # The secret the runs and the code location read holds what the code location needs.
    [secret] = deployment["envSecrets"]
    created = set(re.findall(r"--from-literal=(\w+)=", (DEPLOY / "k8s" / "values.yaml").read_text()))
    assert secret["name"] in (DEPLOY / "k8s" / "values.yaml").read_text().split("kubectl create secret generic ")[1]
    assert created >= CODE_LOCATION_ENV
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
