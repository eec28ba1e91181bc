"""A contender process's own peak RSS, for `benchmarks/side_by_side.py` (the product and each peer).

Not ``getrusage().ru_maxrss``: Linux carries the parent's high-water mark over fork + exec into the
child, so every contender reported at least what the benchmark's own process held when it started
it (the product's million-deal load read 756 MB that way, 382 MB as its own ``VmHWM``).
"""

from __future__ import annotations

import re
import resource
import sys


def peak_rss_mb() -> float:
    """This process's own peak resident set in MB: ``VmHWM`` on Linux, ``ru_maxrss`` elsewhere."""
    if sys.platform.startswith("linux"):
        with open("/proc/self/status") as status:
            return int(re.search(r"VmHWM:\s+(\d+)", status.read()).group(1)) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
