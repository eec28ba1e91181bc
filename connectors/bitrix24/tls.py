"""TLS settings shared by every HTTP client of the connector (REST calls, the OAuth server)."""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's one TLS context, as httpx builds it by default (certifi's CA bundle, or
    ``SSL_CERT_FILE``/``SSL_CERT_DIR``; certificate and host checks on), shared by every client:
    building one reads the CA bundle, ~60 ms of CPU, and a run makes a client per portal, the sensor
    one per peek (a thousand portals: minutes of CPU an hour). An `ssl.SSLContext` is safe to share
    between threads and connections."""
    return httpx.create_ssl_context()
