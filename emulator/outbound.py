"""Calls the portal makes to apps: install callbacks and event handlers (facts §7.3, §2.13).

Bitrix24 POSTs these form-encoded with PHP brackets (``auth[access_token]=…``). Here they are queued
and sent by one background thread, so a slow or dead handler never holds up a REST request.
Delivery is best effort, as in Bitrix24: failures are logged (URL only, never the payload) and dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import httpx

from emulator.params import encode_query

log = logging.getLogger(__name__)

TIMEOUT_S = 5.0
_FORM = {"content-type": "application/x-www-form-urlencoded"}


class OutboundPoster:
    """A daemon thread draining a queue of form POSTs."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[str, str]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0

    def post_form(self, url: str, payload: dict[str, Any]) -> None:
        with self._lock:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="emulator-outbound", daemon=True)
                self._thread.start()
        self._queue.put((url, encode_query(payload)))

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until everything queued so far was sent (or failed); ``False`` on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _run(self) -> None:
        # Test handlers often serve self-signed TLS on loopback; the payload is emulator data only.
        with httpx.Client(timeout=TIMEOUT_S, verify=False) as client:
            while True:
                url, form = self._queue.get()
                try:
                    client.post(url, content=form, headers=_FORM)
                except httpx.HTTPError as error:
                    log.warning("outbound POST to %s failed: %s", url, type(error).__name__)
                finally:
                    with self._idle:
                        self._pending -= 1
                        self._idle.notify_all()


_poster = OutboundPoster()


def post_form(url: str, payload: dict[str, Any]) -> None:
    """Queue a form-encoded POST of ``payload`` to ``url``; returns at once (contract §4)."""
    _poster.post_form(url, payload)


def wait_idle(timeout: float = 10.0) -> bool:
    """Wait until queued outbound POSTs are done; for tests that assert on what a handler received."""
    return _poster.wait_idle(timeout)
