"""The code location `benchmarks/scale.py` runs: the product's definitions with the fleet numbers the
benchmark was asked for (``--portals-per-run``, passed as ``B24_SCALE_PORTALS_PER_RUN``; default: the
product's own default). Everything else is `pipelines.definitions.default_resources`.

    dagster dev -m benchmarks.scale_location
"""

import os

from pipelines.definitions import build_definitions, default_resources
from pipelines.resources import Bitrix24Resource

PORTALS_PER_RUN = int(os.environ.get("B24_SCALE_PORTALS_PER_RUN")
                      or Bitrix24Resource.model_fields["portals_per_run"].default)

defs = build_definitions(default_resources(portals_per_run=PORTALS_PER_RUN))
