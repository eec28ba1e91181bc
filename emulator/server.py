"""The HTTP face of the emulator: routing, request decoding, envelopes, faults, and uvicorn.

URL layout (contract "URLs"): ``/rest/{method}[.json]`` with an OAuth token, ``/rest/{user}/{code}/{method}``
for webhooks, ``/oauth/authorize/`` per portal (default portal at the root, others under ``/{name}/``),
``/oauth/token/`` and the OAuth server's own REST (``/oauth/rest/app.info``, facts §7.5) once at the
root, and the control API under ``/_emulator/``, with an HTML index of the portals at ``/_emulator/``
and ``/``.
The REST path is plain ASGI to keep it cheap: it is the hot path of every benchmark.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any
from urllib.parse import urlencode

import orjson
import uvicorn
from starlette.requests import Request

from emulator import batch, dispatch, system  # noqa: F401  (importing registers batch and system methods)
from emulator.auth import OAuthError, webhook_caller
from emulator.control import build_control_app
from emulator.errors import MethodNotFound, QueryLimitExceeded, RestError
from emulator.faults import SLOW_KINDS, TRANSPORT_KINDS, Fault
from emulator.index import render_index
from emulator.params import decode_pairs, decode_query, normalize_json
from emulator.portal import Portal
from emulator.world import World

_JSON = b"application/json; charset=utf-8"
_HTML = b"text/html; charset=utf-8"
_AUTH_PARAMS = ("auth", "access_token")
_OAUTH_REST = "/oauth/rest/"
_INDEX_PATHS = ("/", "/_emulator", "/_emulator/")  # a browser's first stop: the portals index (emulator.index)
_OAUTH_FAULT_KINDS = TRANSPORT_KINDS | SLOW_KINDS
_DROPPED = "ASGI callable returned without completing response."
_HTML_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)

Scope = dict[str, Any]


def dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        # Handlers may build dicts with int keys; PHP would print them as strings.
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


async def _respond(send: Any, status: int, body: bytes, content_type: bytes = _JSON,
                   extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def read_params(scope: Scope, receive: Any) -> dict[str, Any]:
    """Query string plus body (JSON, urlencoded or multipart), body keys winning like PHP's $_REQUEST."""
    params = decode_query(scope["query_string"].decode("latin-1"))
    content_type = _header(scope, b"content-type").lower()
    if content_type.startswith("multipart/form-data"):
        form = await Request(scope, receive).form()
        body = decode_pairs((name, value) for name, value in form.multi_items() if isinstance(value, str))
    else:
        raw = await _read_body(receive)
        if not raw:
            return params
        if content_type.startswith("application/json"):
            try:
                decoded = normalize_json(orjson.loads(raw))
            except orjson.JSONDecodeError:
                decoded = {}
            body = decoded if isinstance(decoded, dict) else {}
        else:
            body = decode_query(raw.decode("utf-8", errors="replace"))
    if params:
        params.update(body)
        return params
    return body


def _envelope(outcome: dispatch.CallOutcome) -> bytes:
    body: dict[str, Any] = {"result": outcome.result}
    if outcome.total is not None:
        body["total"] = outcome.total
    if outcome.next is not None:
        body["next"] = outcome.next
    body["time"] = outcome.time
    return dumps(body)


class EmulatorApp:
    """The ASGI application: REST and OAuth per portal, plus the control API."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.control = build_control_app(world)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path in _INDEX_PATHS and scope["method"] in ("GET", "HEAD"):
            await _respond(send, 200, render_index(self.world), _HTML)
            return
        if path.startswith("/_emulator/"):
            await self.control(scope, receive, send)
            return
        if path in ("/oauth/token/", "/oauth/token"):
            await self._token(scope, receive, send)
            return
        if path.startswith(_OAUTH_REST):
            await self._oauth_rest(path[len(_OAUTH_REST):], scope, receive, send)
            return
        portal, tail = self.world.route(path)
        if portal is not None and tail.startswith("/rest/"):
            await self._rest(portal, tail[6:], scope, receive, send)
        elif portal is not None and tail in ("/oauth/authorize/", "/oauth/authorize"):
            await self._authorize(portal, scope, receive, send)
        else:
            await _respond(send, 404, dumps({"error": "NOT_FOUND", "error_description": "Not found"}))

    # -- REST ---------------------------------------------------------------------------------

    async def _rest(self, portal: Portal, tail: str, scope: Scope, receive: Any, send: Any) -> None:
        started = time.time()
        parts = [part for part in tail.split("/") if part]
        webhook = parts[:2] if len(parts) == 3 else None
        method = (parts[-1] if len(parts) in (1, 3) else "").lower().removesuffix(".json")
        if portal.latency_ms:
            await asyncio.sleep(portal.latency_ms / 1000)
        if not portal.limits.admit_request():
            portal.stats.record_call(method, 503)
            await self._error(portal, send, QueryLimitExceeded())
            return
        params = await read_params(scope, receive)
        token = self._take_token(scope, params)
        connector = params.get("auth_connector")
        connector = connector if isinstance(connector, str) else ""
        fault = portal.faults.draw(method, TRANSPORT_KINDS)
        if fault is not None and fault.kind == "expire_token" and token:
            self.world.oauth.expire(portal, access_token=token)
        if fault is not None and fault.phase == "before":
            portal.stats.record_call(method, 500 if fault.kind == "http_500" else 502)
            await self._fault_response(portal, send, fault, b"")
            return
        try:
            if webhook is not None:
                caller = webhook_caller(portal, webhook[0], webhook[1], connector)
            else:
                caller = self.world.oauth.caller(portal, token, connector)
        except RestError as error:
            portal.stats.record_call(method, error.status)
            await self._error(portal, send, error)
            return
        outcome = await dispatch.execute(portal, caller, method, params, started=started)
        if outcome.error is not None:
            await self._error(portal, send, outcome.error, fault)
            return
        body = _envelope(outcome)
        if fault is not None and fault.phase == "after":
            await self._fault_response(portal, send, fault, body)
            return
        portal.stats.record_response(200, len(body))
        await _respond(send, 200, body)

    @staticmethod
    def _take_token(scope: Scope, params: dict[str, Any]) -> str | None:
        # Facts §1.1: `auth` (query or body), `access_token`, or an `Authorization: Bearer` header.
        token = None
        for name in _AUTH_PARAMS:
            value = params.pop(name, None)
            if token is None and isinstance(value, str) and value:
                token = value
        if token is None:
            header = _header(scope, b"authorization")
            if header[:7].lower() == "bearer ":
                token = header[7:].strip() or None
        return token

    async def _error(self, portal: Portal, send: Any, error: RestError, fault: Fault | None = None) -> None:
        body = dumps(error.body())
        if fault is not None and fault.phase == "after":
            await self._fault_response(portal, send, fault, body)
            return
        portal.stats.record_response(error.status, len(body))
        await _respond(send, error.status, body)

    async def _fault_response(self, portal: Portal | None, send: Any, fault: Fault, body: bytes) -> None:
        """Answer as ``fault`` says; ``portal`` None for the OAuth server (no per-portal stats)."""
        if fault.kind == "http_500":
            status, payload, content_type = 500, dumps(dispatch.InternalServerError().body()), _JSON
        elif fault.kind == "html":
            status, payload, content_type = 502, _HTML_PAGE, _HTML
        elif fault.kind == "malformed_json":
            status, payload, content_type = 200, body[: max(1, len(body) // 2)], _JSON
        else:  # drop: the status line and headers go out, then the connection closes
            if portal is not None:
                portal.stats.record_response(200, 0)
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", _JSON), (b"content-length", str(len(body) or 1).encode())]})
            return
        if portal is not None:
            portal.stats.record_response(status, len(payload))
        await _respond(send, status, payload, content_type)

    # -- OAuth --------------------------------------------------------------------------------

    async def _authorize(self, portal: Portal, scope: Scope, receive: Any, send: Any) -> None:
        """Auto-approve as the configured user and hand out a 30-second code (facts §7.2)."""
        params = await read_params(scope, receive)
        client_id = str(params.get("client_id", ""))
        app = self.world.oauth.apps.get(client_id)
        installation = portal.installations.get(client_id)
        if app is None:
            await _respond(send, 400, dumps(OAuthError("invalid_client", "Unknown client_id").body()))
            return
        if installation is None:
            body = OAuthError("NOT_INSTALLED", "Application is not installed on the portal").body()
            await _respond(send, 400, dumps(body))
            return
        user_id = portal.authorize_user_id or installation.installed_by
        answer = {"code": self.world.oauth.issue_code(portal, client_id, user_id)}
        if "state" in params:
            answer["state"] = str(params["state"])
        answer.update({
            "domain": portal.domain,
            "member_id": portal.member_id,
            "scope": ",".join(sorted(app.scopes)),
            "server_domain": self.world.oauth.host,
        })
        target = app.redirect_uri or app.handler_url
        if not target:
            await _respond(send, 200, dumps(answer))
            return
        location = f"{target}{'&' if '?' in target else '?'}{urlencode(answer)}"
        await _respond(send, 302, b"", extra_headers=[(b"location", location.encode())])

    async def _token(self, scope: Scope, receive: Any, send: Any) -> None:
        params = await read_params(scope, receive)
        fault = await self._oauth_fault("token", send)
        if fault is not None and fault.phase == "before":
            return
        try:
            status, body = 200, dumps(self.world.oauth.grant(params))
        except OAuthError as error:
            status, body = error.status, dumps(error.body())
        await self._oauth_answer(send, status, body, fault)

    async def _oauth_rest(self, tail: str, scope: Scope, receive: Any, send: Any) -> None:
        """The OAuth server's REST: only ``app.info`` (facts §7.5), with a token like a portal's."""
        method = tail.strip("/").lower().removesuffix(".json")
        params = await read_params(scope, receive)
        if method != "app.info":
            await _respond(send, 404, dumps(MethodNotFound().body()))
            return
        token = self._take_token(scope, params)
        fault = await self._oauth_fault(method, send, token)
        if fault is not None and fault.phase == "before":
            return
        try:
            status, body = 200, dumps({"result": self.world.oauth.app_info(token)})
        except RestError as error:
            status, body = error.status, dumps(error.body())
        await self._oauth_answer(send, status, body, fault)

    async def _oauth_fault(self, method: str, send: Any, token: str | None = None) -> Fault | None:
        """Count the call and draw the OAuth server's fault; a "before" fault is answered here."""
        oauth = self.world.oauth
        oauth.calls[method] += 1
        fault = oauth.faults.draw(method, _OAUTH_FAULT_KINDS)
        if fault is None:
            return None
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay_s)
            return None
        if fault.kind == "expire_token":
            if token:
                oauth.expire(None, access_token=token)
            return None
        if fault.phase == "before":
            await self._fault_response(None, send, fault, b"")
        return fault

    async def _oauth_answer(self, send: Any, status: int, body: bytes, fault: Fault | None) -> None:
        if fault is not None and fault.phase == "after":
            await self._fault_response(None, send, fault, body)
        else:
            await _respond(send, status, body)


class _DropFilter(logging.Filter):
    """The ``drop`` fault leaves responses incomplete on purpose; uvicorn need not log that."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _DROPPED


_drop_filter = _DropFilter()


def bind_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def root_url(scheme: str, host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"{scheme}://{shown}:{port}"


class EmulatorServer:
    """uvicorn around `EmulatorApp` on an already bound socket; runs in the foreground or a thread."""

    def __init__(self, world: World, sock: socket.socket, *, ssl_certfile: str | None = None,
                 ssl_keyfile: str | None = None, log_level: str = "warning") -> None:
        self.world = world
        self.socket = sock
        config = uvicorn.Config(
            EmulatorApp(world),
            lifespan="off",
            log_level=log_level,
            access_log=False,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        logging.getLogger("uvicorn.error").addFilter(_drop_filter)  # added once: filters are a set

    @property
    def started(self) -> bool:
        return self._server.started

    def run(self) -> None:
        self._server.run(sockets=[self.socket])

    def start_in_thread(self, timeout: float = 30.0) -> None:
        self._thread = threading.Thread(target=self.run, name="emulator-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("emulator server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.socket.close()
