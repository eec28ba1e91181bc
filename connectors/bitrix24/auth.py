"""Credentials: incoming webhooks (reading only) and OAuth apps with persisted, rotating tokens.

Offline events need an OAuth app: webhooks get 403 WRONG_AUTH_TYPE on event.* (facts §2.2, §7.1).
An OAuth access token lives one hour; on 401 ``expired_token`` the client asks the session to
`renew` and retries once, never refreshing proactively (facts §7.2). Each refresh returns a new
pair and (per older docs) invalidates the old refresh token, so the new pair is saved to the
`TokenStore` *before* it is used: a crash right after the refresh must not strand the portal.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import orjson

from connectors.bitrix24.errors import (
    AuthError,
    MalformedResponse,
    ReauthorizationRequired,
    TransportError,
)
from connectors.bitrix24.redaction import MASK, redact, register_secret
from connectors.bitrix24.tls import tls_context

DEFAULT_TOKEN_URL = "https://oauth.bitrix.info/oauth/token/"


class TokenStore(Protocol):
    """Where a portal's Bitrix token JSON lives between runs (file here; SQLite/PostgreSQL elsewhere)."""

    def load(self, portal: str) -> dict | None: ...

    def save(self, portal: str, token: dict) -> None: ...

    # Optional: stores shared by several processes also offer ``refresh_lock(portal)``, a context
    # manager held around a refresh so only one process rotates the pair.


class FileTokenStore:
    """One JSON file per portal in a private directory; written atomically, readable only by us."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"FileTokenStore({str(self.directory)!r})"

    def path(self, portal: str) -> Path:
        # Portal keys are domains or member ids; the digest keeps distinct keys in distinct files
        # even when their readable parts sanitize alike.
        readable = re.sub(r"[^A-Za-z0-9._-]", "_", portal)[:80]
        digest = hashlib.sha256(portal.encode()).hexdigest()[:12]
        return self.directory / f"{readable}-{digest}.json"

    def load(self, portal: str) -> dict | None:
        try:
            data = self.path(portal).read_bytes()
        except FileNotFoundError:
            return None
        token = orjson.loads(data)
        register_secret(token.get("access_token"), token.get("refresh_token"),
                        token.get("application_token"))
        return token

    def save(self, portal: str, token: dict) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self.path(portal)
        # mkstemp creates the file 0600; os.replace makes the switch atomic for concurrent readers.
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".token-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(orjson.dumps(token))
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        directory_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)


@dataclass(frozen=True)
class Grant:
    """What one request needs to authenticate: where to send it and what to add to its body."""

    endpoint: str  # ends with "/": ".../rest/" (OAuth) or ".../rest/{user}/{code}/" (webhook)
    body: dict = field(repr=False)  # {"auth": access_token} for OAuth, {} for webhooks
    access_token: str | None = field(default=None, repr=False)


class Credentials(Protocol):
    """How `Bitrix24Client` authenticates; `renew` is called after a 401 expired_token."""

    portal: str

    def grant(self) -> Grant: ...

    def renew(self, stale: Grant) -> None: ...


class WebhookCredentials:
    """An incoming webhook URL ``https://{portal}/rest/{user_id}/{code}/`` (reading only)."""

    def __init__(self, url: str) -> None:
        match = re.fullmatch(r"(?P<base>.+?/rest/)(?P<user>\d+)/(?P<code>[^/]+)/?", url.strip())
        if match is None:
            raise ValueError("a webhook URL looks like https://{portal}/rest/{user_id}/{code}/")
        self._code = match["code"]
        register_secret(self._code)
        self.user_id = int(match["user"])
        self.base = match["base"]
        self.portal = httpx.URL(self.base).host
        self._endpoint = f"{self.base}{self.user_id}/{self._code}/"

    def __repr__(self) -> str:
        return f"WebhookCredentials('{self.base}{self.user_id}/{MASK}/')"

    def grant(self) -> Grant:
        return Grant(self._endpoint, {})

    def renew(self, stale: Grant) -> None:
        raise AuthError("INVALID_CREDENTIALS", "webhook credentials cannot be renewed", status=401)


@dataclass(frozen=True)
class OAuthApp:
    """An application's keys; ``client_secret`` only ever goes to the OAuth server (facts §7.2)."""

    client_id: str
    client_secret: str = field(repr=False)
    token_url: str = DEFAULT_TOKEN_URL

    def __post_init__(self) -> None:
        register_secret(self.client_secret)

    @classmethod
    def from_environment(cls) -> OAuthApp:
        """B24_CLIENT_ID, B24_CLIENT_SECRET and optionally B24_OAUTH_TOKEN_URL: keys never go on a
        command line, where any user of the machine can read them. Raises ValueError naming the
        variables that are unset or empty (never their values)."""
        missing = [name for name in ("B24_CLIENT_ID", "B24_CLIENT_SECRET") if not os.environ.get(name)]
        if missing:
            raise ValueError(f"set {' and '.join(missing)} in the environment: the app's client id and secret "
                             "from its Bitrix24 registration (the emulator's app: local.emulator.app / "
                             "emulator-secret)")
        return cls(os.environ["B24_CLIENT_ID"], os.environ["B24_CLIENT_SECRET"],
                   token_url=os.environ.get("B24_OAUTH_TOKEN_URL", DEFAULT_TOKEN_URL))

    def session(self, portal: str, store: TokenStore, *, http: httpx.Client | None = None) -> OAuthSession:
        return OAuthSession(self, portal, store, http=http)


class OAuthSession:
    """One portal's tokens for one app: the current pair, and a single-flight refresh."""

    def __init__(self, app: OAuthApp, portal: str, store: TokenStore, *,
                 http: httpx.Client | None = None) -> None:
        self.app = app
        self.portal = portal
        self.store = store
        self._http = http
        self._lock = threading.Lock()
        self._token: dict | None = None
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"OAuthSession(client_id={self.app.client_id!r}, portal={self.portal!r})"

    @property
    def member_id(self) -> str | None:
        return self._current().get("member_id")

    def grant(self) -> Grant:
        token = self._current()
        endpoint = token.get("client_endpoint")
        if not endpoint:
            raise ReauthorizationRequired(self.portal, "the stored token has no client_endpoint")
        if not endpoint.endswith("/"):
            endpoint += "/"
        return Grant(endpoint, {"auth": token["access_token"]}, token["access_token"])

    def renew(self, stale: Grant) -> None:
        """Make sure the token after `stale` is current: adopt a newer one, or refresh once."""
        with self._lock:
            current = self._current_locked()
            if current.get("access_token") != stale.access_token:
                return  # another thread refreshed while we waited for the lock
            # Another process (a second worker, the install receiver) may have rotated already;
            # refreshing with the same refresh token again would fail or fork the pair. A store
            # shared by processes offers a lock around the read-refresh-save.
            cross_process = getattr(self.store, "refresh_lock", None)
            with cross_process(self.portal) if cross_process else nullcontext():
                stored = self.store.load(self.portal)
                if stored and stored.get("access_token") != stale.access_token:
                    self._adopt(stored)
                    return
                self._refresh(stored or current)

    def _current(self) -> dict:
        with self._lock:
            return self._current_locked()

    def _current_locked(self) -> dict:
        if self._token is not None:
            return self._token
        token = self.store.load(self.portal)
        if not token or not token.get("access_token"):
            raise ReauthorizationRequired(self.portal, "no token stored for this portal")
        return self._adopt(token)

    def _adopt(self, token: dict) -> dict:
        register_secret(token.get("access_token"), token.get("refresh_token"),
                        token.get("application_token"))
        self._token = token
        return token

    def _refresh(self, token: dict) -> None:
        refresh_token = token.get("refresh_token")
        if not refresh_token:
            raise ReauthorizationRequired(self.portal, "the stored token has no refresh_token")
        answer = self._post_refresh(refresh_token)
        error = answer.get("error")
        if error == "invalid_grant":
            # Lost a race with another process that used this refresh token first?
            stored = self.store.load(self.portal)
            if stored and stored.get("refresh_token") not in (None, refresh_token):
                self._adopt(stored)
                return
            raise ReauthorizationRequired(self.portal, str(answer.get("error_description") or ""))
        if error or not answer.get("access_token") or not answer.get("refresh_token"):
            raise AuthError(str(error or "invalid_response"),
                            str(answer.get("error_description") or "the OAuth server sent no token pair"),
                            method="oauth/token")
        rotated = {**token, **answer}
        register_secret(rotated["access_token"], rotated["refresh_token"])
        # Persist first: the old refresh token may already be void, so an unsaved pair is a lost portal.
        self.store.save(self.portal, rotated)
        self._token = rotated
        self.refreshes += 1

    def _post_refresh(self, refresh_token: str) -> dict:
        # The docs show a GET with everything in the query string (facts §7.2); we POST a form so
        # the secret and the refresh token stay out of URLs and access logs.
        form = {"grant_type": "refresh_token", "client_id": self.app.client_id,
                "client_secret": self.app.client_secret, "refresh_token": refresh_token}
        http = self._http or httpx.Client(timeout=30.0, verify=tls_context())
        try:
            response = http.post(self.app.token_url, data=form)
        except httpx.HTTPError as exc:
            raise TransportError(redact(f"OAuth token refresh failed: {type(exc).__name__}: {exc}")) from None
        finally:
            if self._http is None:
                http.close()
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            raise MalformedResponse("oauth/token", response.status_code, "not a JSON object",
                                    response.content)
        return answer
