"""Hand the heap a step freed back to the operating system before the next step starts.

A step's peak is mostly short-lived Python objects (a fetch holds one 2,500-record answer and its
typed frame at a time). CPython frees them, but glibc's allocator keeps the freed pages for reuse,
so the next step (a commit, whose DuckDB buffer pool lives in other memory) stacked its own peak on
freed but still resident heap (~80 MB after a fetch, read once with a step wrapper like
`benchmarks/memory.py --per-step`): a million-deal full load peaked at 424 MB where the steps
alone need under 400 (`benchmarks/memory.py`, issue 13 goal 3). ``malloc_trim`` returns those pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from collections.abc import Callable
from functools import cache

log = logging.getLogger(__name__)


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim): nothing to give back this way
        log.debug("malloc_trim is not available; freed heap stays with the allocator")
        return None


def give_back_freed_memory() -> None:
    """Return the C heap's free pages to the OS (glibc's ``malloc_trim(0)``; a no-op elsewhere). Takes
    well under a millisecond (0.07 ms, timed once here with the product imported); called between steps."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
