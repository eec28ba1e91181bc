"""The product's code location as `benchmarks/freshness.py` runs it: a portal without push is peeked
every 10 s (the product's default is 60 s), so the polling mode measures something in minutes."""

import dagster as dg

from pipelines.definitions import build_definitions
from pipelines.resources import Bitrix24Resource, WarehouseResource

defs = build_definitions({
    "bitrix24": Bitrix24Resource(client_id=dg.EnvVar("B24_CLIENT_ID"), client_secret=dg.EnvVar("B24_CLIENT_SECRET"),
                                 oauth_token_url=dg.EnvVar("B24_OAUTH_TOKEN_URL"),
                                 state_store=dg.EnvVar("B24_STATE_STORE"), peek_interval_s=10),
    "warehouse": WarehouseResource(url=dg.EnvVar("B24_WAREHOUSE")),
})
