"""`python -m connectors.receiver`: serve the receiver (loopback by default).

Reads the app's keys and the state store from the same environment as the Dagster code location:
B24_CLIENT_ID, B24_CLIENT_SECRET, B24_OAUTH_TOKEN_URL, B24_STATE_STORE. Installs are verified with
the OAuth server beside B24_OAUTH_TOKEN_URL, or with B24_OAUTH_SERVER_ENDPOINT when set (the
emulator's is ``{url}/oauth/rest/``). B24_ALLOWED_DOMAINS, a comma list of portal domains, refuses
installs from any other portal before anything is called.
"""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn

from connectors.bitrix24 import Bitrix24Client, InstallVerifier, OAuthApp
from connectors.receiver.app import ReceiverSettings, create_app
from connectors.receiver.binding import bind_portal
from connectors.state import open_state_store
from connectors.sync.portal import DEFAULT_CONNECTOR


def allowed_domains(value: str | None) -> frozenset[str] | None:
    """``"a.bitrix24.com, b.bitrix24.com"`` -> those domains (lower case); unset or blank -> None (any)."""
    domains = frozenset(part.strip().lower() for part in (value or "").split(",") if part.strip())
    return domains or None


def main() -> None:
    parser = argparse.ArgumentParser(description="Bitrix24 app receiver: installs and push signals")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8131)
    parser.add_argument("--public-url", required=True, help="the address the portal POSTs to")
    parser.add_argument("--min-timeout", type=int, default=5, help="ONOFFLINEEVENT minTimeout, seconds")
    parser.add_argument("--connector", default=DEFAULT_CONNECTOR)
    parser.add_argument("--no-push", action="store_true",
                        help="do not bind ONOFFLINEEVENT: the sensor then relies on polling alone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    try:
        app_keys = OAuthApp.from_environment()
    except ValueError as error:
        parser.error(str(error))
    if not os.environ.get("B24_STATE_STORE"):
        parser.error("set B24_STATE_STORE (a SQLite file or postgresql:// DSN): the receiver stores each "
                     "install's tokens there")
    state = open_state_store(os.environ["B24_STATE_STORE"])

    def on_install(portal: str, settings: ReceiverSettings) -> None:
        with Bitrix24Client(app_keys.session(portal, state.tokens)) as client:
            push_url = None if args.no_push else f"{settings.public_url}/events"
            bind_portal(client, args.connector, push_url, settings.min_timeout_s)

    verifier = InstallVerifier.from_environment(app_keys)
    settings = ReceiverSettings(public_url=args.public_url.rstrip("/"), min_timeout_s=args.min_timeout,
                                allowed_domains=allowed_domains(os.environ.get("B24_ALLOWED_DOMAINS")))
    logging.getLogger(__name__).info("installs are verified with %sapp.info%s", verifier.server_endpoint,
                                     "" if settings.allowed_domains is None else
                                     f"; allowed portals: {', '.join(sorted(settings.allowed_domains))}")
    uvicorn.run(create_app(state, settings, verifier, on_install), host=args.host, port=args.port,
                log_level="warning")


if __name__ == "__main__":
    main()
