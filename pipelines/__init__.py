"""Dagster definitions: sensor, op graph, assets, checks, jobs. Thin: it wires `connectors/`."""
