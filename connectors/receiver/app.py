"""The app's small HTTP receiver: install callback, ``ONOFFLINEEVENT`` and ``ONAPPUNINSTALL``.

Bitrix24 POSTs these form-encoded with PHP brackets (``auth[access_token]=...``; facts §7.3-§7.4,
§2.13). The install callback is the one moment we receive a refresh token without a user: the
portal and its tokens are stored, and the offline events plus ``ONOFFLINEEVENT`` are bound. Every
later call is checked against the portal's ``application_token`` before anything is recorded.
The receiver only records; the Dagster sensor reads the signals and starts the runs.

Nothing a caller says is believed unchecked. An install is refused (403, nothing stored, no call to
any address it names) when its domain is not on the optional allow-list, or when the OAuth server we
are configured with (`InstallVerifier`, facts §7.5) says its access token is unknown, another app's,
or another portal's; it gets 503 (so the portal tries again) when the OAuth server cannot answer.
What is stored comes from the OAuth server's answer (``member_id``, ``domain``, ``client_endpoint``),
so the install hook only ever calls the portal the OAuth server named.

Re-installs: a portal we know must also present its stored ``application_token``. If it presents
another one (Bitrix24 may compute a new one, facts §7.4), the claim is verified by app.info *and* its
refresh token is redeemed once with the OAuth server (only our app's refresh token for that portal
rotates), so working credentials are only ever replaced by credentials proven to work.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from connectors.bitrix24.install_check import (
    InstallClaim,
    InstallRejected,
    InstallUnverifiable,
    InstallVerifier,
    VerifiedInstall,
)
from connectors.state import Portal, StateStore

log = logging.getLogger(__name__)

REQUIRED_INSTALL_FIELDS = ("access_token", "refresh_token", "domain", "client_endpoint", "member_id",
                           "application_token")
TOKEN_FIELDS = ("access_token", "refresh_token", "expires", "expires_in", "scope", "domain",
                "server_endpoint", "client_endpoint", "member_id", "user_id", "status")


def portal_key(client_endpoint: str) -> str:
    """A hostname-like key for a portal (the Dagster partition key): host, port and path prefix.

    ``https://acme.bitrix24.com/rest/`` -> ``acme.bitrix24.com``;
    ``http://127.0.0.1:8130/p2/rest/`` -> ``127.0.0.1-8130-p2``.
    """
    parts = urlsplit(client_endpoint)
    if not parts.hostname:
        raise ValueError("client_endpoint has no host")
    pieces = [parts.hostname] + ([str(parts.port)] if parts.port else [])
    path = parts.path.strip("/").removesuffix("rest").strip("/")
    pieces += [piece for piece in path.split("/") if piece]
    key = "-".join(pieces).lower()
    if not key.replace("-", "").replace(".", "").isalnum():
        raise ValueError("client_endpoint does not make a hostname-like portal key")
    return key


def bracket_form(items: list[tuple[str, str]]) -> dict[str, Any]:
    """``auth[access_token]=x&data[0]=y`` -> ``{"auth": {"access_token": "x"}, "data": {"0": "y"}}``."""
    decoded: dict[str, Any] = {}
    for raw_key, value in items:
        head, _, rest = raw_key.partition("[")
        path = [head] + ([piece.rstrip("]") for piece in rest.split("[")] if rest else [])
        node = decoded
        for piece in path[:-1]:
            child = node.get(piece)
            if not isinstance(child, dict):
                child = node[piece] = {}
            node = child
        node[path[-1]] = value
    return decoded


@dataclass(frozen=True)
class ReceiverSettings:
    public_url: str  # how the portal reaches us, e.g. https://etl.example.com/bitrix24 (no trailing /)
    min_timeout_s: int = 5  # ONOFFLINEEVENT minTimeout: at most one push per portal this often
    # Portal domains (as ``auth[domain]`` names them, e.g. acme.bitrix24.com) allowed to install;
    # None allows any portal the OAuth server vouches for.
    allowed_domains: frozenset[str] | None = None

    def allows(self, domain: str) -> bool:
        return self.allowed_domains is None or domain.lower() in {d.lower() for d in self.allowed_domains}


# Called (in a background thread) after an install is stored: binds the events on the portal.
InstallHook = Callable[[str, ReceiverSettings], None]


def create_app(state: StateStore, settings: ReceiverSettings, verifier: InstallVerifier,
               on_install: InstallHook | None = None) -> Starlette:
    """The receiver's ASGI app: ``POST /install``, ``POST /events``, ``GET /health``.

    ``verifier`` asks the configured OAuth server about every install; ``on_install`` runs in a
    background thread after an install is stored (it binds the events on the portal).
    """

    async def install(request: Request) -> Response:
        form = bracket_form(list((await request.form()).multi_items()))
        auth = form.get("auth") if isinstance(form.get("auth"), Mapping) else {}
        missing = [name for name in REQUIRED_INSTALL_FIELDS if not isinstance(auth.get(name), str) or not auth[name]]
        if missing:
            return JSONResponse({"error": "invalid_install", "missing": missing}, status_code=400)
        if not settings.allows(auth["domain"]):
            log.warning("install refused: domain is not on the allow-list")
            return _refused("the portal's domain is not on this receiver's allow-list")
        claim = InstallClaim(member_id=auth["member_id"], domain=auth["domain"],
                             client_endpoint=auth["client_endpoint"], access_token=auth["access_token"])
        try:
            verified = await run_in_threadpool(verifier.verify, claim)
            key = portal_key(verified.client_endpoint)
            holder = state.portal(key)
            if holder is not None and holder.member_id != verified.member_id:
                # Two addresses can make one key (a port or path piece vs. a hyphenated host): never let
                # another portal's install take over the key, its tokens and its warehouse rows. Checked
                # before a refresh token is redeemed, which would spend it.
                log.warning("install refused: portal key %s belongs to another portal", key)
                return JSONResponse({"error": "install_conflict",
                                     "detail": f"the portal key {key!r} already belongs to another portal"},
                                    status_code=409)
            token = {name: auth[name] for name in TOKEN_FIELDS if name in auth}
            known = state.portal_by_member_id(verified.member_id)
            if known is not None and not hmac.compare_digest(known.application_token.encode(),
                                                             auth["application_token"].encode()):
                # Verified, but not the secret we hold: only a refresh token that works replaces ours.
                token.update(await run_in_threadpool(verifier.redeem_refresh_token, auth["refresh_token"], verified))
                log.warning("portal %s presented a new application_token; accepted after the OAuth server "
                            "confirmed its token pair", known.key)
        except InstallRejected as error:
            log.warning("install refused: %s", error.reason)
            return _refused(error.reason)
        except InstallUnverifiable as error:
            log.warning("install not verified, the portal may retry: %s", error.reason)
            return JSONResponse({"error": "install_unverified",
                                 "detail": "the OAuth server could not confirm this install; try again later"},
                                status_code=503)
        except ValueError as error:  # a client_endpoint the OAuth server named but we cannot key
            return JSONResponse({"error": "invalid_install", "detail": str(error)}, status_code=400)
        if known is not None and known.key != key:
            # A renamed portal keeps its member_id (facts §1.1): same warehouse rows, new address.
            log.warning("portal %s now answers at %s", known.key, key)
        _store(state, key, verified, auth["application_token"], token)
        log.info("installed on portal %s (verified with the OAuth server)", key)
        if on_install is not None:
            threading.Thread(target=_run_hook, args=(on_install, key, settings), daemon=True).start()
        return JSONResponse({"portal": key})

    async def event(request: Request) -> Response:
        form = bracket_form(list((await request.form()).multi_items()))
        auth = form.get("auth") if isinstance(form.get("auth"), Mapping) else {}
        name = str(form.get("event", "")).upper()
        portal = state.portal_by_member_id(str(auth.get("member_id", "")))
        if portal is None or not state.verify_application_token(portal.key, str(auth.get("application_token", ""))):
            # The only proof an event comes from the portal (facts §7.4): refuse anything else.
            return PlainTextResponse("unknown portal or application_token", status_code=401)
        if name == "ONOFFLINEEVENT":
            state.record_signal(portal.key, datetime.now(UTC))
        elif name == "ONAPPUNINSTALL":
            state.mark_uninstalled(portal.key)
            log.warning("portal %s uninstalled the app", portal.key)
        else:
            return PlainTextResponse(f"event {name or '?'} not handled", status_code=400)
        return PlainTextResponse("ok")

    async def health(_: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(routes=[
        Route("/install", install, methods=["POST"]),
        Route("/events", event, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ])


def _refused(reason: str) -> Response:
    return JSONResponse({"error": "install_refused", "detail": reason}, status_code=403)


def _store(state: StateStore, key: str, verified: VerifiedInstall, application_token: str, token: dict) -> None:
    """Save what the OAuth server vouched for: its member_id, domain and client_endpoint win.

    The token first: whoever sees the portal row (the sensor) finds its token too.
    """
    state.save_token(key, {**token, "member_id": verified.member_id, "domain": verified.domain,
                           "client_endpoint": verified.client_endpoint})
    state.save_portal(Portal(
        key=key, member_id=verified.member_id, domain=verified.domain,
        client_endpoint=verified.client_endpoint, application_token=application_token,
        installed_at=datetime.now(UTC)))


def _run_hook(hook: InstallHook, key: str, settings: ReceiverSettings) -> None:
    try:
        hook(key, settings)
    except Exception:  # the install is stored; the full resync binds again and reports there
        log.exception("binding events on portal %s after install failed", key)
