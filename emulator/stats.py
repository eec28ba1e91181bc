"""Request statistics per portal, so tests and benchmarks can count what a client really sent.

``http_requests`` counts HTTP calls (a ``batch`` is one); ``methods`` counts every executed method call,
batch sub-calls included, with its errors, 503/429 answers and charged operating seconds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass
class MethodStats:
    calls: int = 0
    errors: int = 0
    status_503: int = 0
    status_429: int = 0
    operating_s: float = 0.0


class PortalStats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.http_requests = 0
        self.status: Counter[int] = Counter()
        self.bytes_out = 0
        self.methods: dict[str, MethodStats] = {}

    def record_response(self, status: int, bytes_out: int) -> None:
        self.http_requests += 1
        self.status[status] += 1
        self.bytes_out += bytes_out

    def record_call(self, method: str, status: int, operating_s: float = 0.0) -> None:
        stats = self.methods.get(method)
        if stats is None:
            stats = self.methods[method] = MethodStats()
        stats.calls += 1
        if status != 200:
            stats.errors += 1
            if status == 503:
                stats.status_503 += 1
            elif status == 429:
                stats.status_429 += 1
        stats.operating_s += operating_s

    def snapshot(self) -> dict:
        return {
            "http_requests": self.http_requests,
            "status": {str(status): count for status, count in sorted(self.status.items())},
            "bytes_out": self.bytes_out,
            "methods": {
                name: {
                    "calls": m.calls,
                    "errors": m.errors,
                    "status_503": m.status_503,
                    "status_429": m.status_429,
                    "operating_s": round(m.operating_s, 6),
                }
                for name, m in sorted(self.methods.items())
            },
        }
