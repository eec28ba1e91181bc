"""Per-portal locks between processes on one machine, as lock files beside the SQLite store.

A SQLite write transaction would lock the whole store for the length of a token refresh (an HTTP
round trip to the OAuth server), blocking every other portal's writes; a lock file per portal
blocks only the processes refreshing that portal. `flock` belongs to the open file, so threads that
open the file themselves exclude each other too, and the kernel drops the lock when a holder dies.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from connectors.state.errors import LockTimeout

_POLL_SECONDS = 0.02


class PortalLocks:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @contextmanager
    def hold(self, portal: str, timeout: float) -> Iterator[None]:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Hashed, so any portal key makes a plain file name.
        name = hashlib.sha256(portal.encode()).hexdigest()[:32] + ".lock"
        descriptor = os.open(self.directory / name, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeout(f"refresh lock of {portal} still held after {timeout:g} s") from None
                    time.sleep(_POLL_SECONDS)
            yield
        finally:
            os.close(descriptor)
