"""What a client has spent on a portal: HTTP requests, refusals, and each method's ``time`` blocks.

Every successful response carries ``time`` (facts §1.3): ``processing`` is the handler's own time,
``operating`` the method's 10-minute budget consumption so far. A batch counts as one request but
reports a ``result_time`` per command, which is accounted under the command's own method.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass


@dataclass
class MethodUsage:
    calls: int = 0  # executed calls (batch sub-commands included)
    errors: int = 0
    processing_s: float = 0.0  # sum of time.processing
    duration_s: float = 0.0  # sum of time.duration
    operating_s: float = 0.0  # last reported time.operating (a sliding 10-minute sum)
    operating_reset_at: float | None = None


class Usage:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.http_requests = 0
        self.retries = 0
        self.refreshes = 0
        self.statuses: dict[int, int] = {}
        self.methods: dict[str, MethodUsage] = {}

    def request(self, status: int | None) -> None:
        with self._lock:
            self.http_requests += 1
            if status is not None:
                self.statuses[status] = self.statuses.get(status, 0) + 1

    def retry(self) -> None:
        with self._lock:
            self.retries += 1

    def refresh(self) -> None:
        with self._lock:
            self.refreshes += 1

    def call(self, method: str, time_block: dict | None) -> None:
        with self._lock:
            usage = self.methods.setdefault(method, MethodUsage())
            usage.calls += 1
            if not isinstance(time_block, dict):
                return
            usage.processing_s += float(time_block.get("processing") or 0.0)
            usage.duration_s += float(time_block.get("duration") or 0.0)
            if time_block.get("operating") is not None:
                usage.operating_s = float(time_block["operating"])
            if time_block.get("operating_reset_at") is not None:
                usage.operating_reset_at = float(time_block["operating_reset_at"])

    def error(self, method: str) -> None:
        with self._lock:
            self.methods.setdefault(method, MethodUsage()).errors += 1

    def snapshot(self) -> dict:
        """A plain dict for metadata and reports (counts and seconds only, nothing secret)."""
        with self._lock:
            return {
                "http_requests": self.http_requests,
                "retries": self.retries,
                "refreshes": self.refreshes,
                "statuses": dict(self.statuses),
                "methods": {name: asdict(usage) for name, usage in sorted(self.methods.items())},
            }
