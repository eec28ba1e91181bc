"""Source and destination sides of the Bitrix24 → warehouse connector (no Dagster here)."""

import os

import pyarrow

# Arrow's own allocator (mimalloc in these wheels) keeps what a run frees for reuse, so a run's
# resident memory stayed at its high-water mark of typing and staging chunks: 35-40 MB above the
# system allocator's on a 100,000-deal load (benchmarks/memory.py, 438 against 402 MB), at the same
# wall time. The run's budget is 400 MB (issue 13), so the product uses the system allocator unless
# the operator chose one (Arrow's documented ARROW_DEFAULT_MEMORY_POOL variable).
if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
    pyarrow.set_memory_pool(pyarrow.system_memory_pool())
