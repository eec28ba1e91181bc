"""Small system methods every app can call: ``feature.get``, ``app.info``, ``profile``, ``scope`` …

Shapes follow facts §2.15 (``feature.get``) and §7.2 (``app.info``); the user methods return the
handful of fields a client needs (id, name, admin flag).
"""

from __future__ import annotations

from typing import Any

from emulator.errors import RestError
from emulator.registry import METHODS, CallContext, param, rest_method

# Licence names in app.info look like "de_ent10000" (facts §7.2).
_LICENSE = {"standard": "en_std", "professional": "en_pro100", "enterprise": "en_ent250"}
_FAMILY = {"standard": "std", "professional": "pro", "enterprise": "ent"}


@rest_method("feature.get", scope="basic")
def feature_get(ctx: CallContext, params: dict) -> dict[str, str]:
    code = param(params, "CODE")
    if not code:
        raise RestError("CODE can't be empty", code="CODE_EMPTY")
    return {"value": "Y" if str(code) in ctx.portal.features else "N"}


@rest_method("app.info", scope="basic")
def app_info(ctx: CallContext, params: dict) -> dict[str, Any]:
    plan = ctx.portal.plan
    licence = {"LICENSE": _LICENSE[plan], "LICENSE_TYPE": _FAMILY[plan], "LICENSE_FAMILY": _FAMILY[plan]}
    client_id = ctx.caller.client_id
    if client_id is None:
        return {"SCOPE": ",".join(sorted(ctx.caller.scopes)), **licence}
    installation = ctx.portal.installations[client_id]
    return {
        "ID": list(ctx.portal.installations).index(client_id) + 1,
        "CODE": client_id,
        "VERSION": 1,
        "STATUS": installation.app.status,
        "INSTALLED": True,
        "PAYMENT_EXPIRED": "N",
        "DAYS": None,
        "LANGUAGE_ID": "en",
        **licence,
    }


def _user_fields(ctx: CallContext) -> dict[str, Any]:
    user = ctx.portal.users[ctx.caller.user_id]
    first, _, last = user.name.partition(" ")
    return {"ID": user.id, "ADMIN": user.is_admin, "NAME": first, "LAST_NAME": last}


@rest_method("profile", scope="basic")
def profile(ctx: CallContext, params: dict) -> dict[str, Any]:
    return _user_fields(ctx)


@rest_method("user.current", scope="user")
def user_current(ctx: CallContext, params: dict) -> dict[str, Any]:
    fields = _user_fields(ctx)
    # user.* methods write ids as strings, like the legacy CRM lists.
    return {**fields, "ID": str(fields["ID"]), "ACTIVE": True}


@rest_method("user.admin", scope="basic")
def user_admin(ctx: CallContext, params: dict) -> bool:
    return ctx.caller.is_admin


@rest_method("scope", scope="basic")
def scope(ctx: CallContext, params: dict) -> list[str]:
    if param(params, "full"):
        return sorted({method.scope for method in METHODS.values()})
    return sorted(ctx.caller.scopes)


@rest_method("methods", scope="basic")
def methods(ctx: CallContext, params: dict) -> list[str]:
    wanted = param(params, "scope")
    if wanted:
        return sorted(name for name, method in METHODS.items() if method.scope == wanted)
    allowed = ctx.caller.scopes | {"basic"}
    return sorted(name for name, method in METHODS.items() if method.scope in allowed)
