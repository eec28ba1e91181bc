"""The product's code location with a two-minute freshness window (the product's is 10 minutes; the
warning comes at one minute, the least Dagster allows), so a test can watch freshness go red; the
sensor renews a quiet portal's watermark well inside it."""

from datetime import timedelta

import dagster as dg

from pipelines.definitions import build_definitions
from pipelines.resources import Bitrix24Resource, WarehouseResource

FRESHNESS_WINDOW = timedelta(seconds=120)

defs = build_definitions({
    "bitrix24": Bitrix24Resource(client_id=dg.EnvVar("B24_CLIENT_ID"), client_secret=dg.EnvVar("B24_CLIENT_SECRET"),
                                 oauth_token_url=dg.EnvVar("B24_OAUTH_TOKEN_URL"),
                                 state_store=dg.EnvVar("B24_STATE_STORE"), peek_interval_s=10,
                                 confirm_current_every_s=20),
    "warehouse": WarehouseResource(url=dg.EnvVar("B24_WAREHOUSE")),
}, freshness_window=FRESHNESS_WINDOW)
