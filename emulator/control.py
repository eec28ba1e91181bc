"""The control API under ``/_emulator/``: build portals, install apps, inject faults (per portal, or
into the shared OAuth server under ``/oauth/faults``), read the truth.

No auth: it is for tests, benchmarks and the demo on loopback (contract "Control API"). Everything
here runs on the server's event loop, so it never races a REST handler; CRM reads and writes also take
``portal.lock`` because the activity generator writes from its own thread.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emulator.activity import ActivityGenerator
from emulator.events import Origin
from emulator.faults import Fault, FaultPlan
from emulator.portal import Portal, User
from emulator.world import ALL_SCOPES, World

PREFIX = "/_emulator"
_LIMIT_FIELDS = {"enabled": bool, "burst": int, "drain_per_s": float, "operating_limit_s": float,
                 "charge_batch": bool}


class ControlError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def portal_info(portal: Portal) -> dict[str, Any]:
    settings = portal.limit_settings
    return {
        "name": portal.name,
        "plan": portal.plan,
        "base_url": portal.base_url,
        "member_id": portal.member_id,
        "features": sorted(portal.features),
        "limits": {
            "enabled": settings.enabled,
            "burst": portal.limits.bucket.burst,
            "drain_per_s": portal.limits.bucket.drain_per_s,
            "operating_limit_s": settings.operating_limit_s,
            "charge_batch": settings.charge_batch,
        },
        "latency_ms": portal.latency_ms,
        "token_ttl_s": portal.token_ttl_s,
        "error_unreserves_lane_rows": portal.error_unreserves_lane_rows,
        "users": [{"id": u.id, "name": u.name, "is_admin": u.is_admin} for u in portal.users.values()],
        "apps": sorted(portal.installations),
    }


async def _json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ControlError("body must be JSON") from None
    if not isinstance(body, dict):
        raise ControlError("body must be a JSON object")
    return body


def _require(body: dict[str, Any], name: str) -> Any:
    if name not in body:
        raise ControlError(f"missing {name!r}")
    return body[name]


async def _edit_faults(request: Request, plan: FaultPlan) -> JSONResponse:
    """GET lists, POST adds (``method``, ``kind``, ``rate``, ``count``, ``delay_s``, ``phase``), DELETE clears."""
    if request.method == "DELETE":
        plan.clear()
    elif request.method == "POST":
        body = await _json(request)
        count = body.get("count")
        plan.add(Fault(
            method=str(_require(body, "method")),
            kind=str(_require(body, "kind")),
            rate=float(body.get("rate", 1.0)),
            count=None if count is None else int(count),
            delay_s=float(body.get("delay_s", 1.0)),
            phase=str(body.get("phase", "")),
        ))
    return JSONResponse({"faults": plan.describe()})


def build_control_app(world: World) -> Starlette:
    def portal_of(request: Request) -> Portal:
        return world.portal(request.path_params["portal"])

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def list_portals(request: Request) -> JSONResponse:
        return JSONResponse([
            {"name": p.name, "plan": p.plan, "base_url": p.base_url, "member_id": p.member_id}
            for p in world.portals.values()
        ])

    async def create_portal(request: Request) -> JSONResponse:
        body = await _json(request)
        portal = world.add_portal(
            str(_require(body, "name")),
            plan=body.get("plan", "professional"),
            seed=int(body.get("seed", 1)),
            counts=body.get("counts"),
            smart_process_types=int(body.get("smart_process_types", 1)),
        )
        return JSONResponse(portal_info(portal), status_code=201)

    async def show_portal(request: Request) -> JSONResponse:
        return JSONResponse(portal_info(portal_of(request)))

    async def patch_portal(request: Request) -> JSONResponse:
        portal = portal_of(request)
        body = await _json(request)
        limits = body.get("limits") or {}
        unknown = set(limits) - set(_LIMIT_FIELDS)
        if unknown:
            raise ControlError(f"unknown limit settings: {', '.join(sorted(unknown))}")
        if "plan" in body:
            portal.set_plan(str(body["plan"]))
        for name, kind in _LIMIT_FIELDS.items():
            if name in limits:
                value = limits[name]
                setattr(portal.limit_settings, name, None if value is None else kind(value))
        portal.reconfigure_limits()
        if "latency_ms" in body:
            portal.latency_ms = float(body["latency_ms"])
        if "token_ttl_s" in body:
            portal.token_ttl_s = int(body["token_ttl_s"])
        if "error_unreserves_lane_rows" in body:
            portal.error_unreserves_lane_rows = bool(body["error_unreserves_lane_rows"])
        if "authorize_user_id" in body:
            portal.authorize_user_id = body["authorize_user_id"]
        return JSONResponse(portal_info(portal))

    async def add_user(request: Request) -> JSONResponse:
        portal = portal_of(request)
        body = await _json(request)
        user_id = int(_require(body, "id"))
        user = User(user_id, str(body.get("name", f"User {user_id}")), bool(body.get("is_admin", False)))
        with portal.lock:
            if user_id in portal.users:  # an update of a seeded user: no ONUSERADD
                portal.users[user_id] = user
            else:
                portal.add_user(user)
        return JSONResponse({"id": user.id, "name": user.name, "is_admin": user.is_admin}, status_code=201)

    async def add_webhook(request: Request) -> JSONResponse:
        portal = portal_of(request)
        body = await _json(request)
        webhook = world.add_webhook(portal, int(_require(body, "user_id")), str(_require(body, "code")),
                                    body.get("scopes", sorted(ALL_SCOPES)))
        return JSONResponse({"user_id": webhook.user_id, "scopes": sorted(webhook.scopes),
                             "url": f"{portal.base_url}/rest/{webhook.user_id}/{webhook.code}/"},
                            status_code=201)

    async def add_app(request: Request) -> JSONResponse:
        body = await _json(request)
        app = world.register_app(str(_require(body, "client_id")), str(_require(body, "client_secret")),
                                 body.get("scopes", sorted(ALL_SCOPES)), str(body.get("handler_url", "")),
                                 str(body.get("redirect_uri", "")))
        return JSONResponse({"client_id": app.client_id, "scopes": sorted(app.scopes),
                             "handler_url": app.handler_url, "redirect_uri": app.redirect_uri},
                            status_code=201)

    async def install(request: Request) -> JSONResponse:
        portal = portal_of(request)
        body = await _json(request)
        user_id = body.get("user_id")
        tokens = world.install(portal, str(_require(body, "client_id")),
                               None if user_id is None else int(user_id))
        return JSONResponse(tokens)

    async def expire_tokens(request: Request) -> JSONResponse:
        portal = portal_of(request)
        body = await _json(request)
        client_id = body.get("client_id")
        return JSONResponse({"expired": world.oauth.expire(portal, client_id=client_id)})

    async def faults(request: Request) -> JSONResponse:
        return await _edit_faults(request, portal_of(request).faults)

    async def oauth_faults(request: Request) -> JSONResponse:
        """The OAuth server's own faults: methods ``token`` and ``app.info`` (emulator.faults)."""
        return await _edit_faults(request, world.oauth.faults)

    async def oauth_info(request: Request) -> JSONResponse:
        oauth = world.oauth
        return JSONResponse({"token_url": oauth.token_url, "server_endpoint": oauth.server_endpoint,
                             "calls": dict(oauth.calls), "faults": oauth.faults.describe()})

    async def activity(request: Request) -> JSONResponse:
        portal = portal_of(request)
        if request.method in ("POST", "DELETE") and portal.activity is not None:
            portal.activity.stop()
        if request.method == "POST":
            body = await _json(request)
            seed = body.get("seed")
            portal.activity = ActivityGenerator(portal, float(_require(body, "rate_per_s")), body.get("mix"),
                                                None if seed is None else int(seed))
            portal.activity.start()
        generator = portal.activity
        if request.method == "DELETE":
            portal.activity = None
        return JSONResponse({"running": portal.activity is not None,
                             "stats": generator.stats() if generator is not None else {}})

    async def crm_write(request: Request) -> JSONResponse:
        portal = portal_of(request)
        body = await _json(request)
        user_id = body.get("user_id") or min(
            (u.id for u in portal.users.values() if not u.is_admin), default=1)
        record_id = body.get("id")
        origin = Origin(user_id=int(user_id), client_id=None, auth_connector="")
        with portal.lock:
            new_id = portal.crm.write(request.path_params["entity"], str(_require(body, "op")),
                                      None if record_id is None else int(record_id),
                                      body.get("fields") or {}, origin)
        return JSONResponse({"id": new_id})

    async def crm_restore(request: Request) -> JSONResponse:
        portal = portal_of(request)
        body = await _json(request)
        user_id = body.get("user_id") or min(
            (u.id for u in portal.users.values() if not u.is_admin), default=1)
        entity_id = int(request.path_params["id"])
        origin = Origin(user_id=int(user_id), client_id=None, auth_connector="")
        portal.crm.restore(request.path_params["entity"], entity_id, origin)
        return JSONResponse({"id": entity_id})

    async def truth(request: Request) -> JSONResponse:
        portal = portal_of(request)
        entity = request.path_params["entity"]
        with portal.lock:
            rows = portal.crm.ground_truth(entity)
        return JSONResponse({"entity": entity, "rows": rows, "writes": portal.crm.write_counts(entity)})

    async def writes(request: Request) -> JSONResponse:
        """GET: writes received per object, op, app and connector (``?entity=lead`` narrows); DELETE
        forgets them."""
        portal = portal_of(request)
        if request.method == "DELETE":
            with portal.lock:
                portal.crm.writes.clear()
        return JSONResponse({"writes": portal.crm.write_counts(request.query_params.get("entity"))})

    async def queue(request: Request) -> JSONResponse:
        portal = portal_of(request)
        with portal.lock:
            rows = portal.events.queue_rows()
        return JSONResponse({"rows": rows})

    async def stats(request: Request) -> JSONResponse:
        portal = portal_of(request)
        if request.method == "DELETE":
            portal.stats.reset()
        return JSONResponse(portal.stats.snapshot())

    async def on_control_error(request: Request, error: Exception) -> JSONResponse:
        if isinstance(error, ControlError):
            status = error.status
        elif isinstance(error, LookupError):  # unknown portal, app, entity or record
            status = 404
        else:
            status = 400
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        return JSONResponse({"error": str(message)}, status_code=status)

    portal_path = PREFIX + "/portals/{portal}"
    routes = [
        Route(PREFIX + "/health", health, methods=["GET"]),
        Route(PREFIX + "/portals", list_portals, methods=["GET"]),
        Route(PREFIX + "/portals", create_portal, methods=["POST"]),
        Route(portal_path, show_portal, methods=["GET"]),
        Route(portal_path, patch_portal, methods=["PATCH"]),
        Route(portal_path + "/users", add_user, methods=["POST"]),
        Route(portal_path + "/webhooks", add_webhook, methods=["POST"]),
        Route(PREFIX + "/apps", add_app, methods=["POST"]),
        Route(PREFIX + "/oauth", oauth_info, methods=["GET"]),
        Route(PREFIX + "/oauth/faults", oauth_faults, methods=["GET", "POST", "DELETE"]),
        Route(portal_path + "/install", install, methods=["POST"]),
        Route(portal_path + "/tokens/expire", expire_tokens, methods=["POST"]),
        Route(portal_path + "/faults", faults, methods=["GET", "POST", "DELETE"]),
        Route(portal_path + "/activity", activity, methods=["GET", "POST", "DELETE"]),
        Route(portal_path + "/crm/{entity}", crm_write, methods=["POST"]),
        Route(portal_path + "/crm/{entity}/{id:int}/restore", crm_restore, methods=["POST"]),
        Route(portal_path + "/truth/{entity}", truth, methods=["GET"]),
        Route(portal_path + "/writes", writes, methods=["GET", "DELETE"]),
        Route(portal_path + "/queue", queue, methods=["GET"]),
        Route(portal_path + "/stats", stats, methods=["GET", "DELETE"]),
    ]
    handlers = {error: on_control_error for error in (ControlError, LookupError, ValueError, TypeError)}
    return Starlette(routes=routes, exception_handlers=handlers)
