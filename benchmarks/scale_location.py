"""The code location `benchmarks/scale.py` runs: the product's definitions with the fleet numbers the
benchmark was asked for (``--portals-per-run``, passed as ``B24_SCALE_PORTALS_PER_RUN``; default: the
product's own default). Everything else is `pipelines.definitions.default_resources`.

    dagster dev -m benchmarks.scale_location
"""

import os

import dagster as dg

from pipelines.definitions import build_definitions
from pipelines.resources import Bitrix24Resource, WarehouseResource

PORTALS_PER_RUN = int(os.environ.get("B24_SCALE_PORTALS_PER_RUN")
                      or Bitrix24Resource.model_fields["portals_per_run"].default)

defs = build_definitions({
    "bitrix24": Bitrix24Resource(
        client_id=dg.EnvVar("B24_CLIENT_ID"),
        client_secret=dg.EnvVar("B24_CLIENT_SECRET"),
        oauth_token_url=dg.EnvVar("B24_OAUTH_TOKEN_URL"),
        state_store=dg.EnvVar("B24_STATE_STORE"),
        portals_per_run=PORTALS_PER_RUN,
    ),
    "warehouse": WarehouseResource(url=dg.EnvVar("B24_WAREHOUSE")),
})
