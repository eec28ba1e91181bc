"""``python -m emulator serve`` (run a portal server) and ``python -m emulator ctl`` (drive its control API).

``serve`` prints one line, ``emulator listening on <url>``, once the port accepts requests; scripts wait
for it. ``ctl`` prints the control API's JSON answer and exits non-zero on an HTTP error.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import httpx

from emulator.server import EmulatorServer, bind_socket, root_url
from emulator.world import DEFAULT_COUNTS, EmulatorOptions, build_world

READY_PREFIX = "emulator listening on "
URL_ENV = "B24_EMULATOR_URL"
# CLI flag -> counts key (contract "CLI").
COUNT_FLAGS = {"deals": "deal", "contacts": "contact", "companies": "company", "leads": "lead",
               "activities": "activity", "items": "item"}


# -- serve ------------------------------------------------------------------------------------------

def _add_serve(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the emulator")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    serve.add_argument("--plan", choices=("standard", "professional", "enterprise"), default="professional")
    serve.add_argument("--no-limits", action="store_true", help="switch off the 503/429 limiters")
    serve.add_argument("--seed", type=int, default=1)
    for flag, key in COUNT_FLAGS.items():
        serve.add_argument(f"--{flag}", type=int, default=DEFAULT_COUNTS[key])
    serve.add_argument("--smart-process-types", type=int, default=1)
    serve.add_argument("--client-id", default="local.emulator.app")
    serve.add_argument("--client-secret", default="emulator-secret")
    serve.add_argument("--webhook", default="1/emulatorwebhook", help="{user_id}/{code}; empty for none")
    serve.add_argument("--token-ttl", type=int, default=3600, help="access-token lifetime, seconds")
    serve.add_argument("--latency-ms", type=float, default=0.0)
    serve.add_argument("--ssl-certfile")
    serve.add_argument("--ssl-keyfile")
    serve.add_argument("--app-handler-url", default="", help="install callback / OAuth redirect target")
    serve.add_argument("--log-level", default="warning")


def options_from_args(args: argparse.Namespace) -> EmulatorOptions:
    return EmulatorOptions(
        host=args.host,
        port=args.port,
        plan=args.plan,
        limits=not args.no_limits,
        seed=args.seed,
        counts={key: getattr(args, flag) for flag, key in COUNT_FLAGS.items()},
        smart_process_types=args.smart_process_types,
        client_id=args.client_id,
        client_secret=args.client_secret,
        webhook=args.webhook,
        token_ttl=args.token_ttl,
        latency_ms=args.latency_ms,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        app_handler_url=args.app_handler_url,
    )


def start_server(options: EmulatorOptions, log_level: str = "warning") -> EmulatorServer:
    """Bind, build the world (seeding the default portal) and serve in a background thread."""
    if bool(options.ssl_certfile) != bool(options.ssl_keyfile):
        raise SystemExit("--ssl-certfile and --ssl-keyfile go together")
    sock = bind_socket(options.host, options.port)
    url = root_url(options.scheme, options.host, sock.getsockname()[1])
    world = build_world(options, url)
    server = EmulatorServer(world, sock, ssl_certfile=options.ssl_certfile, ssl_keyfile=options.ssl_keyfile,
                            log_level=log_level)
    server.start_in_thread()
    return server


def _serve(args: argparse.Namespace) -> int:
    server = start_server(options_from_args(args), args.log_level)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"{READY_PREFIX}{server.world.root_url}", flush=True)
    stop.wait()
    server.stop()
    return 0


# -- ctl --------------------------------------------------------------------------------------------

def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError("expected on or off")
    return text == "on"


def _scopes(text: str) -> list[str]:
    return [scope for scope in text.split(",") if scope]


def _add_ctl(commands: Any) -> None:
    ctl = commands.add_parser("ctl", help="call the control API of a running emulator")
    ctl.add_argument("--url", default=os.environ.get(URL_ENV, "http://127.0.0.1:8000"),
                     help=f"emulator root URL (default ${URL_ENV} or http://127.0.0.1:8000)")
    ctl.add_argument("--cacert", help="CA bundle for an https emulator (e.g. its self-signed cert)")
    sub = ctl.add_subparsers(dest="ctl", required=True)

    def per_portal(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text)
        parser.add_argument("-p", "--portal", default="default")
        return parser

    sub.add_parser("health", help="is it up")
    portal = sub.add_parser("portal", help="list, show, create or change portals")
    portal_sub = portal.add_subparsers(dest="action", required=True)
    portal_sub.add_parser("list")
    portal_sub.add_parser("show").add_argument("name")
    create = portal_sub.add_parser("create")
    create.add_argument("name")
    create.add_argument("--plan", default="professional")
    create.add_argument("--seed", type=int, default=1)
    for flag, key in COUNT_FLAGS.items():
        create.add_argument(f"--{flag}", type=int, default=DEFAULT_COUNTS[key])
    patch = portal_sub.add_parser("patch")
    patch.add_argument("name")
    patch.add_argument("--plan")
    patch.add_argument("--limits", type=_on_off, help="on or off")
    patch.add_argument("--burst", type=int)
    patch.add_argument("--drain-per-s", type=float)
    patch.add_argument("--operating-limit-s", type=float)
    patch.add_argument("--charge-batch", type=_on_off, help="on or off (facts §10.8, unconfirmed)")
    patch.add_argument("--latency-ms", type=float)
    patch.add_argument("--token-ttl", type=int)

    user = per_portal("user", "add a user")
    user.add_argument("id", type=int)
    user.add_argument("--name")
    user.add_argument("--admin", action="store_true")
    webhook = per_portal("webhook", "add an incoming webhook")
    webhook.add_argument("user_id", type=int)
    webhook.add_argument("code")
    webhook.add_argument("--scopes", type=_scopes, default=["crm", "department", "user"])
    app = sub.add_parser("app", help="register an OAuth app (usable on every portal)")
    app.add_argument("client_id")
    app.add_argument("client_secret")
    app.add_argument("--scopes", type=_scopes, default=["crm", "department", "user"])
    app.add_argument("--handler-url", default="")
    app.add_argument("--redirect-uri", default="")
    install = per_portal("install", "install an app; prints its tokens")
    install.add_argument("client_id")
    install.add_argument("--user-id", type=int)
    expire = per_portal("expire-tokens", "expire access tokens now")
    expire.add_argument("--client-id")
    fault = per_portal("fault", "add, list or clear injected faults")
    fault.add_argument("action", choices=("add", "list", "clear"))
    fault.add_argument("method", nargs="?", default="*")
    fault.add_argument("kind", nargs="?")
    fault.add_argument("--rate", type=float, default=1.0)
    fault.add_argument("--count", type=int)
    fault.add_argument("--delay-s", type=float, default=1.0)
    fault.add_argument("--phase", default="")
    activity = per_portal("activity", "start, stop or inspect the user-activity generator")
    activity.add_argument("action", choices=("start", "stop", "stats"))
    activity.add_argument("--rate", type=float, default=1.0, help="changes per second")
    activity.add_argument("--mix", type=_json_arg)
    activity.add_argument("--seed", type=int)
    write = per_portal("write", "make a CRM change as a UI user")
    write.add_argument("entity")
    write.add_argument("op", choices=("add", "update", "delete"))
    write.add_argument("--id", type=int)
    write.add_argument("--fields", type=_json_arg, default={})
    truth = per_portal("truth", "the current state of one entity kind")
    truth.add_argument("entity")
    per_portal("queue", "all offline-event queue rows")
    stats = per_portal("stats", "request statistics")
    stats.add_argument("--reset", action="store_true")


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def ctl_request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    """The (HTTP method, path below /_emulator/, JSON body) a ctl command stands for."""
    command = args.ctl
    portal = f"portals/{getattr(args, 'portal', '')}"
    if command == "health":
        return "GET", "health", None
    if command == "portal":
        if args.action == "list":
            return "GET", "portals", None
        if args.action == "show":
            return "GET", f"portals/{args.name}", None
        if args.action == "create":
            counts = {key: getattr(args, flag) for flag, key in COUNT_FLAGS.items()}
            return "POST", "portals", {"name": args.name, "plan": args.plan, "seed": args.seed,
                                       "counts": counts}
        limits = _drop_none({"enabled": args.limits, "burst": args.burst, "drain_per_s": args.drain_per_s,
                             "operating_limit_s": args.operating_limit_s, "charge_batch": args.charge_batch})
        body = _drop_none({"plan": args.plan, "latency_ms": args.latency_ms, "token_ttl_s": args.token_ttl})
        return "PATCH", f"portals/{args.name}", {**body, "limits": limits}
    if command == "user":
        body = _drop_none({"id": args.id, "name": args.name, "is_admin": args.admin})
        return "POST", f"{portal}/users", body
    if command == "webhook":
        body = {"user_id": args.user_id, "code": args.code, "scopes": args.scopes}
        return "POST", f"{portal}/webhooks", body
    if command == "app":
        return "POST", "apps", {"client_id": args.client_id, "client_secret": args.client_secret,
                                "scopes": args.scopes, "handler_url": args.handler_url,
                                "redirect_uri": args.redirect_uri}
    if command == "install":
        return "POST", f"{portal}/install", _drop_none({"client_id": args.client_id, "user_id": args.user_id})
    if command == "expire-tokens":
        return "POST", f"{portal}/tokens/expire", _drop_none({"client_id": args.client_id})
    if command == "fault":
        if args.action == "add":
            if not args.kind:
                raise SystemExit("fault add needs METHOD and KIND")
            return "POST", f"{portal}/faults", _drop_none({
                "method": args.method, "kind": args.kind, "rate": args.rate, "count": args.count,
                "delay_s": args.delay_s, "phase": args.phase})
        return ("DELETE" if args.action == "clear" else "GET"), f"{portal}/faults", None
    if command == "activity":
        if args.action == "start":
            return "POST", f"{portal}/activity", _drop_none({"rate_per_s": args.rate, "mix": args.mix,
                                                             "seed": args.seed})
        return ("DELETE" if args.action == "stop" else "GET"), f"{portal}/activity", None
    if command == "write":
        return "POST", f"{portal}/crm/{args.entity}", _drop_none({"op": args.op, "id": args.id,
                                                                  "fields": args.fields})
    if command == "truth":
        return "GET", f"{portal}/truth/{args.entity}", None
    if command == "queue":
        return "GET", f"{portal}/queue", None
    return ("DELETE" if args.reset else "GET"), f"{portal}/stats", None


def _ctl(args: argparse.Namespace) -> int:
    method, path, body = ctl_request(args)
    verify: Any = args.cacert or True
    with httpx.Client(base_url=args.url.rstrip("/") + "/_emulator/", verify=verify, timeout=60) as client:
        response = client.request(method, path, json=body)
    try:
        shown = json.dumps(response.json(), indent=2, ensure_ascii=False)
    except ValueError:
        shown = response.text
    print(shown)
    return 0 if response.is_success else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emulator", description="Bitrix24 portal emulator")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve(commands)
    _add_ctl(commands)
    args = parser.parse_args(argv)
    return _serve(args) if args.command == "serve" else _ctl(args)


if __name__ == "__main__":
    sys.exit(main())
