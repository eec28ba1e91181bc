"""The product's code location as `benchmarks/freshness.py` runs it: a portal without push is peeked
every 10 s (the product's default is 60 s), so the polling mode measures something in minutes."""

from pipelines.definitions import build_definitions, default_resources

defs = build_definitions(default_resources(peek_interval_s=10))
