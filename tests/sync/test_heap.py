"""Freed heap goes back to the OS between steps (connectors.sync.heap), measured in a fresh process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import re
from connectors.sync.heap import give_back_freed_memory

def rss_mb():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) // 1024

base = rss_mb()
# 100 MB in 60 KB pieces: below glibc's mmap threshold, so they come from the heap, as a fetch's
# strings and lists do; the last one allocated keeps the heap's top in place once the rest are freed.
pieces = [bytearray(60_000) for _ in range(1_700)]
keep = bytearray(60_000)
del pieces
freed = rss_mb()
give_back_freed_memory()
print(base, freed, rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_heap_freed_by_a_step_is_returned_to_the_os() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    base, freed, after = map(int, done.stdout.split())
    assert freed - base > 80  # glibc kept what Python freed
    assert after - base < 20
