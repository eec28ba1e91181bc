"""The product's code location with a two-minute freshness window (the product's is 10 minutes; the
warning comes at one minute, the least Dagster allows), so a test can watch freshness go red; the
sensor renews a quiet portal's watermark well inside it."""

from datetime import timedelta

from pipelines.definitions import build_definitions, default_resources

FRESHNESS_WINDOW = timedelta(seconds=120)

defs = build_definitions(default_resources(peek_interval_s=10, confirm_current_every_s=20),
                         freshness_window=FRESHNESS_WINDOW)
