"""When a failed request is tried again, and how long to wait first.

The policy, explicitly:

* **Refused by a limit** (503 QUERY_LIMIT_EXCEEDED, 429 OPERATION_TIME_LIMIT): the portal checks
  limits before running anything (facts §6.2), so every method is retried — after a jittered
  backoff (503; expected whenever another client shares the bucket, so bounded by the total time
  waited, `max_query_limit_wait_s`, not by `attempts`) or once the method's budget resets (429,
  bounded by `max_operating_wait_s`).
* **Never sent** (connect error, connect timeout, pool timeout): retried for every method.
* **Sent, outcome unknown** (dropped connection, read timeout, 5xx, an HTML error page): retried only
  for reads that are safe to repeat (`is_retry_safe`). Repeating ``event.offline.get clear=1`` would
  lose rows and repeating ``clear=0`` strands a reservation, so those are not; ``crm.*.add`` would
  duplicate an entity.
* **Anything else** (auth, access, argument, not found) is raised at once; 401 expired_token is
  handled by the client (refresh, then one retry).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

_READ_SUFFIXES = (".list", ".get", ".fields", ".info")
_READ_METHODS = frozenset({"feature.get", "event.get", "events", "scope", "methods", "profile", "app.info",
                           "crm.type.list", "event.offline.list"})
# Clearing is idempotent: an unknown or already cleared process id still answers true (facts §2.9).
_IDEMPOTENT_WRITES = frozenset({"event.offline.clear"})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # tries of one request after transient failures, the first included
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0
    max_query_limit_wait_s: float = 300.0  # total backoff after 503s before giving up
    max_operating_wait_s: float = 660.0  # a 429 waits at most this long (a budget window is 600 s)

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full-jitter exponential backoff before retry number ``attempt`` (1-based)."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return rng.uniform(ceiling / 2, ceiling)


def is_retry_safe(method: str, params: Mapping | None = None) -> bool:
    """May this call be repeated when we cannot tell whether the portal executed it?"""
    name = method.lower()
    params = params or {}
    if name == "event.offline.get":
        # Only a re-read of a known reservation without clearing is side-effect free (facts §2.7).
        return bool(_param(params, "process_id")) and str(_param(params, "clear")) == "0"
    if name == "batch":
        commands = _param(params, "cmd") or {}
        values = commands.values() if isinstance(commands, Mapping) else commands
        return all(_command_is_safe(command) for command in values)
    return name in _READ_METHODS or name in _IDEMPOTENT_WRITES or name.endswith(_READ_SUFFIXES)


def _command_is_safe(command: object) -> bool:
    if not isinstance(command, str):
        return False
    method, _, query = command.partition("?")
    if method.lower() == "event.offline.get":
        pairs = {key.lower(): value for key, _, value in (part.partition("=") for part in query.split("&"))}
        return is_retry_safe(method, pairs)
    return is_retry_safe(method)


def _param(params: Mapping, name: str) -> object:
    for key, value in params.items():
        if str(key).lower() == name:
            return value
    return None
