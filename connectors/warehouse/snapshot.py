"""The analysts' copy of a DuckDB warehouse: a read-only file replaced atomically after commits.

DuckDB lets one process hold a file read-write, and any other handle, read-only included, blocks
that writer (dagster-notes, DuckDB). So analysts never open the live file: they open a snapshot
beside it. Publishing checkpoints the live database (the WAL is folded into the file), copies the
file to a temporary name in the snapshot's directory and renames it over the snapshot, so a reader
sees either the old or the new file, never a half-written one; a reader holding the old file open
keeps reading it. Copying the checkpointed file costs a sequential read and write of its bytes,
an order of magnitude less than re-encoding it with ``ATTACH`` + ``COPY FROM DATABASE`` (1.1 s
against 14 s for a 411 MB file of a million deals; ``benchmarks/warehouse_upsert.py`` measures
both), which is why this way was chosen. It still grows with the file, hence ``publish_every``.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from connectors.warehouse.errors import SnapshotError


class SnapshotPublisher:
    """Publishes ``live`` to ``target``; `due` throttles automatic publication to ``every`` seconds."""

    def __init__(self, live: Path, target: Path, every: float | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if target.resolve() == live.resolve():
            raise SnapshotError("the snapshot path must differ from the live database")
        self.live = live
        self.target = target
        self.every = every
        self._clock = clock
        self._published_at: float | None = None

    def __repr__(self) -> str:
        return f"SnapshotPublisher({str(self.target)!r}, every={self.every!r})"

    def due(self) -> bool:
        if self.every is None:
            return False
        return self._published_at is None or self._clock() - self._published_at >= self.every

    def publish(self, checkpoint: Callable[[], None]) -> Path:
        checkpoint()
        wal = self.live.with_name(self.live.name + ".wal")
        if wal.exists() and wal.stat().st_size > 0:
            # A checkpoint leaves committed changes in the WAL only while another transaction is
            # open; copying the file alone would then publish an older state.
            raise SnapshotError(f"{wal} is not empty after CHECKPOINT; is a transaction open?")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=self.target.parent, prefix=f".{self.target.name}.",
                                                 suffix=".tmp")
        os.close(descriptor)
        try:
            shutil.copyfile(self.live, temporary)
            os.chmod(temporary, stat.S_IMODE(self.live.stat().st_mode))
            with open(temporary, "rb+") as copy:
                os.fsync(copy.fileno())
            os.replace(temporary, self.target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        directory = os.open(self.target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._published_at = self._clock()
        return self.target
