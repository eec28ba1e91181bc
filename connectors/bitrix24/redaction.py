"""Keeping secrets (tokens, client secrets, webhook codes) out of logs, reprs and exceptions.

Credentials register their secret strings here as soon as they are known; `redact` replaces them
in any text before it reaches a message, and `install_log_filter` makes the same replacement on the
``httpx`` logger, which logs request URLs at INFO level — and a webhook's URL contains its code
(facts §7.1). The registry is process-wide because log records are.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

MASK = "***"
# Short strings would mask harmless text; real tokens and codes are longer (md5-like, 16+ chars).
_MIN_SECRET_LENGTH = 6
# One portal rotates its token pair hourly; keep recent generations so late log lines still mask.
_MAX_SECRETS = 10_000

_lock = threading.Lock()
_secrets: OrderedDict[str, None] = OrderedDict()


def register_secret(*values: object) -> None:
    """Mask these strings from now on (None and short values are ignored)."""
    with _lock:
        for value in values:
            if isinstance(value, str) and len(value) >= _MIN_SECRET_LENGTH:
                _secrets[value] = None
                _secrets.move_to_end(value)
        while len(_secrets) > _MAX_SECRETS:
            _secrets.popitem(last=False)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    if not text:
        return text
    with _lock:
        secrets = list(_secrets)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Masks registered secrets in a record's message (formatted once, then frozen)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


_installed = False
_HTTP_LOGGERS = ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy")


def install_log_filter() -> None:
    """Attach the filter to the loggers of the HTTP stack we use (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    # Filters do not inherit: every logger that emits records needs its own.
    for name in _HTTP_LOGGERS:
        logging.getLogger(name).addFilter(RedactingFilter())
