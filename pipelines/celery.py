"""The sync job on Celery: each op of a run is a task that any worker on any machine may take.

Load this module instead of `pipelines.definitions` (``dagster ... -m pipelines.celery``) where
runs should spread over Celery workers (deploy/celery/README.md). Everything else is the same code
location; only ``sync_celery`` uses the `dagster_celery.celery_executor`.

The executor reads its broker from the environment where the code location loads, so one image
serves every deployment: ``B24_CELERY_BROKER`` (default RabbitMQ on loopback), ``B24_CELERY_BACKEND``
(default ``rpc://``, results over the broker) and ``B24_CELERY_QUEUE`` (default ``dagster``; the
queue the workers listen on, ``dagster-celery worker start -q``).
"""

import os

import dagster as dg
from dagster_celery import celery_executor

from pipelines import definitions
from pipelines.jobs import CRM_TABLES

DEFAULT_BROKER = "pyamqp://guest:guest@127.0.0.1:5672//"

CELERY_EXECUTOR = celery_executor.configured({
    "broker": os.environ.get("B24_CELERY_BROKER", DEFAULT_BROKER),
    "backend": os.environ.get("B24_CELERY_BACKEND", "rpc://"),
    "config_source": {"task_default_queue": os.environ.get("B24_CELERY_QUEUE", "dagster")},
}, name="celery")

SYNC_CELERY_JOB = dg.define_asset_job(
    "sync_celery",
    selection=CRM_TABLES,
    description="The change sync with every op a Celery task: runs spread over the workers' machines.",
    executor_def=CELERY_EXECUTOR,  # a run past run_monitoring.max_runtime_seconds (dagster.yaml) is failed
)

defs = dg.Definitions.merge(definitions.defs, dg.Definitions(jobs=[SYNC_CELERY_JOB]))
