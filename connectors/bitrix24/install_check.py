"""Checking an install callback with the OAuth server before believing it (facts §7.3-§7.5).

An install callback claims a portal: its domain, ``member_id``, ``client_endpoint`` and a token pair.
Anyone who can reach the receiver can POST such a claim. The OAuth server's ``app.info`` answers, for
the presented access token, which app it was issued to and on which portal that app is installed
(facts §7.5). We ask the OAuth server we are configured with (derived from our token URL, or set
explicitly), never the ``server_endpoint`` or ``client_endpoint`` the caller sent: calling an address a
stranger names is a server-side request forgery.

``app.info`` is a read, so transport faults (connection errors, 5xx, HTML pages, broken JSON) are
retried a few times. Redeeming a refresh token rotates the pair, so it is never repeated.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import httpx
import orjson

from connectors.bitrix24.auth import DEFAULT_TOKEN_URL, OAuthApp
from connectors.bitrix24.errors import Bitrix24Error
from connectors.bitrix24.redaction import MASK, redact, register_secret
from connectors.bitrix24.retry import RetryPolicy
from connectors.bitrix24.tls import tls_context

DEFAULT_SERVER_ENDPOINT = "https://oauth.bitrix.info/rest/"
# The portal waits for our answer to its callback: a few quick tries, then 503 and the portal retries.
VERIFY_RETRY = RetryPolicy(attempts=3, backoff_base_s=0.3, backoff_max_s=1.0)
_TOKEN_PATH = "/oauth/token"
_AUTH_IN_QUERY = re.compile(r"([?&]auth=)[^&\s\"']+")


class InstallRejected(Bitrix24Error):
    """The OAuth server contradicts the claim (unknown token, another app, another portal)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class InstallUnverifiable(Bitrix24Error):
    """The OAuth server could not be asked (unreachable, 5xx, not its app.info shape): try later."""

    def __init__(self, reason: str) -> None:
        self.reason = redact(reason)
        super().__init__(self.reason)


@dataclass(frozen=True)
class InstallClaim:
    """What an install callback says about itself (its ``auth`` block, facts §7.4)."""

    member_id: str
    domain: str
    client_endpoint: str
    access_token: str = field(repr=False)


@dataclass(frozen=True)
class VerifiedInstall:
    """The OAuth server's word on a token: our app, installed on this portal (app.info, facts §7.5)."""

    client_id: str
    member_id: str
    domain: str
    client_endpoint: str
    scope: str
    status: str
    user_id: int | None


def server_endpoint_for(token_url: str) -> str:
    """The OAuth server's REST root beside its token endpoint (facts §7.2, §7.5).

    ``https://oauth.bitrix.info/oauth/token/`` -> ``https://oauth.bitrix.info/rest/``. Raises
    ValueError for a token URL that does not end in ``/oauth/token/``.
    """
    url = httpx.URL(token_url)
    path = url.path.rstrip("/")
    if not path.endswith(_TOKEN_PATH):
        raise ValueError("the token URL does not end in /oauth/token/; set the OAuth server endpoint explicitly")
    return str(url.copy_with(path=path[: -len(_TOKEN_PATH)] + "/rest/", query=None))


def _same_endpoint(left: str, right: str) -> bool:
    try:
        a, b = httpx.URL(left), httpx.URL(right)
    except httpx.InvalidURL:
        return False
    return (a.scheme, a.host, a.port, a.path.rstrip("/")) == (b.scheme, b.host, b.port, b.path.rstrip("/"))


class InstallVerifier:
    """Asks the configured OAuth server whether an install claim is true.

    ``server_endpoint`` defaults to the one beside ``app.token_url`` (`server_endpoint_for`);
    ``http`` may be shared (the verifier does not close it).
    """

    def __init__(self, app: OAuthApp, server_endpoint: str | None = None, *, timeout_s: float = 10.0,
                 retry: RetryPolicy = VERIFY_RETRY, http: httpx.Client | None = None) -> None:
        self.app = app
        endpoint = server_endpoint or (DEFAULT_SERVER_ENDPOINT if app.token_url == DEFAULT_TOKEN_URL
                                       else server_endpoint_for(app.token_url))
        self.server_endpoint = endpoint if endpoint.endswith("/") else endpoint + "/"
        self.timeout_s = timeout_s
        self.retry = retry
        self._http = http
        self._rng = random.Random()
        _mask_auth_in_request_logs()

    def __repr__(self) -> str:
        return f"InstallVerifier(client_id={self.app.client_id!r}, server_endpoint={self.server_endpoint!r})"

    @classmethod
    def from_environment(cls, app: OAuthApp) -> InstallVerifier:
        """B24_OAUTH_SERVER_ENDPOINT if set (e.g. the emulator's ``{url}/oauth/rest/``), else derived."""
        return cls(app, os.environ.get("B24_OAUTH_SERVER_ENDPOINT") or None)

    def verify(self, claim: InstallClaim) -> VerifiedInstall:
        """The OAuth server's ``app.info`` for ``claim.access_token``, checked against the claim.

        Raises `InstallRejected` when the token is unknown or expired, was issued to another app
        (``client_id``), or belongs to another portal (``member_id``, ``domain``, ``client_endpoint``);
        `InstallUnverifiable` when the OAuth server cannot answer after `VERIFY_RETRY`.
        """
        # Not registered as a secret until verified: a stranger could flood the redaction registry
        # (evicting real secrets) with made-up tokens. The query-string filter masks it in logs.
        result = self._app_info(claim.access_token)
        install = result.get("install")
        if not isinstance(install, dict) or "client_id" not in result:
            raise InstallUnverifiable(f"{self.server_endpoint}app.info did not answer with the OAuth server's "
                                      "app.info shape (client_id, install); is the OAuth server endpoint right?")
        if result["client_id"] != self.app.client_id:
            raise InstallRejected("the access token was issued to another application")
        if install.get("installed") is not True:
            raise InstallRejected("the application is not installed on that portal")
        if str(install.get("member_id", "")) != claim.member_id:
            raise InstallRejected("the access token belongs to another portal (member_id)")
        if str(install.get("domain", "")).lower() != claim.domain.lower():
            raise InstallRejected("the access token belongs to another portal (domain)")
        if not _same_endpoint(str(install.get("client_endpoint", "")), claim.client_endpoint):
            raise InstallRejected("the access token belongs to another portal (client_endpoint)")
        register_secret(claim.access_token)
        user_id = result.get("user_id")
        return VerifiedInstall(
            client_id=result["client_id"], member_id=claim.member_id, domain=str(install["domain"]),
            client_endpoint=str(install["client_endpoint"]), scope=str(install.get("scope") or result.get("scope", "")),
            status=str(install.get("status", "")), user_id=int(user_id) if user_id is not None else None)

    def redeem_refresh_token(self, refresh_token: str, verified: VerifiedInstall) -> dict:
        """Prove ``refresh_token`` is ours for that portal by using it once; returns the new pair.

        The token endpoint only rotates a refresh token issued to our ``client_id`` (facts §7.2), and
        its answer names the portal. Not repeated: a second try after a lost answer would present a
        used token. Raises `InstallRejected` (refused, or another portal) or `InstallUnverifiable`.
        """
        form = {"grant_type": "refresh_token", "client_id": self.app.client_id,
                "client_secret": self.app.client_secret, "refresh_token": refresh_token}
        try:
            with self._client() as http:
                response = http.post(self.app.token_url, data=form)
        except httpx.HTTPError as exc:
            raise InstallUnverifiable(f"the OAuth token endpoint is unreachable: {type(exc).__name__}") from None
        answer = _json_object(response)
        if response.status_code >= 500 or answer is None:
            raise InstallUnverifiable(f"the OAuth token endpoint answered HTTP {response.status_code}")
        if answer.get("error") or not answer.get("access_token") or not answer.get("refresh_token"):
            raise InstallRejected(f"the OAuth server refused the refresh token ({answer.get('error', 'no pair')})")
        register_secret(answer["access_token"], answer["refresh_token"])
        if str(answer.get("member_id", "")) != verified.member_id:
            raise InstallRejected("the refresh token belongs to another portal (member_id)")
        return answer

    def _app_info(self, access_token: str) -> dict:
        reason = ""
        for attempt in range(1, self.retry.attempts + 1):
            if attempt > 1:
                time.sleep(self.retry.backoff(attempt - 1, self._rng))
            try:
                with self._client() as http:
                    response = http.get(f"{self.server_endpoint}app.info", params={"auth": access_token})
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}"
                continue
            answer = _json_object(response)
            if response.status_code >= 500 or answer is None:
                reason = f"HTTP {response.status_code}" + ("" if answer is not None else ", not a JSON object")
                continue
            if response.status_code in (401, 403):
                raise InstallRejected(f"the OAuth server does not accept the access token ({answer.get('error', '')})")
            result = answer.get("result")
            if response.status_code != 200 or not isinstance(result, dict):
                raise InstallUnverifiable(f"app.info answered HTTP {response.status_code} {answer.get('error', '')}")
            return result
        raise InstallUnverifiable(f"the OAuth server's app.info failed {self.retry.attempts} times (last: {reason})")

    def _client(self) -> AbstractContextManager[httpx.Client]:
        if self._http is not None:
            return nullcontext(self._http)
        return httpx.Client(timeout=self.timeout_s, verify=tls_context())


class _AuthQueryFilter(logging.Filter):
    """Masks ``auth=<token>`` in logged URLs: app.info takes the token in its query string (facts
    §7.5) and httpx logs request URLs at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = _AUTH_IN_QUERY.sub(rf"\g<1>{MASK}", message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_filter_lock = threading.Lock()
_auth_filter = _AuthQueryFilter()


def _mask_auth_in_request_logs() -> None:
    with _filter_lock:
        logger = logging.getLogger("httpx")
        if _auth_filter not in logger.filters:
            logger.addFilter(_auth_filter)


def _json_object(response: httpx.Response) -> dict | None:
    try:
        answer = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    return answer if isinstance(answer, dict) else None
