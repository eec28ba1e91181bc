"""Run an emulator from a test: ``with run_emulator(plan="standard") as emu: httpx.get(emu.webhook_url + …)``.

`run_emulator` serves from a thread of the test process (fast; ``emu.world`` gives direct access);
`run_emulator_process` runs ``python -m emulator serve`` as a child process, for tests that kill
processes. Both take the options of the ``serve`` CLI as keyword arguments (`EmulatorOptions` field
names, plus ``deals=``/``contacts=``/… as shorthands for ``counts``) and yield objects with the same
helpers. Small defaults keep test start-up fast: pass ``counts`` for more data.
"""

from __future__ import annotations

import os
import selectors
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from emulator.cli import COUNT_FLAGS, READY_PREFIX, start_server
from emulator.world import DEFAULT_PORTAL, EmulatorOptions, World

TEST_COUNTS: dict[str, int] = {"deal": 20, "contact": 10, "company": 5, "lead": 10, "activity": 10, "item": 5}
_OPTION_NAMES = frozenset(f.name for f in fields(EmulatorOptions))


def emulator_options(**options: Any) -> EmulatorOptions:
    """`EmulatorOptions` from keyword arguments; ``deals=5`` etc. override single ``counts`` entries."""
    counts = dict(options.pop("counts", None) or TEST_COUNTS)
    for flag, key in COUNT_FLAGS.items():
        if flag in options:
            counts[key] = int(options.pop(flag))
    unknown = set(options) - _OPTION_NAMES
    if unknown:
        raise TypeError(f"unknown emulator options: {', '.join(sorted(unknown))}")
    options.setdefault("port", 0)
    return EmulatorOptions(counts=counts, **options)


class RunningEmulator:
    """A started emulator: its URLs, the app's and webhook's credentials, and control-API helpers."""

    def __init__(self, url: str, options: EmulatorOptions) -> None:
        self.url = url.rstrip("/")
        self.options = options
        self.client_id = options.client_id
        self.client_secret = options.client_secret
        self.verify: ssl.SSLContext | bool = True
        if options.ssl_certfile:
            # The server's own (self-signed) certificate is the trust anchor.
            self.verify = ssl.create_default_context(cafile=options.ssl_certfile)
        self.control = httpx.Client(base_url=f"{self.url}/_emulator/", verify=self.verify, timeout=60)

    @property
    def webhook_url(self) -> str:
        """``{url}/rest/{user_id}/{code}/`` of the default portal's webhook."""
        return f"{self.url}/rest/{self.options.webhook}/"

    @property
    def token_url(self) -> str:
        """The OAuth server's token endpoint, ``{url}/oauth/token/``."""
        return f"{self.url}/oauth/token/"

    @property
    def oauth_server_endpoint(self) -> str:
        """The OAuth server's REST root (its ``app.info``, facts §7.5): ``{url}/oauth/rest/``."""
        return f"{self.url}/oauth/rest/"

    def portal_url(self, portal: str = DEFAULT_PORTAL) -> str:
        return self.url if portal == DEFAULT_PORTAL else f"{self.url}/{portal}"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.control.request(method, path, json=body)
        if not response.is_success:
            raise RuntimeError(f"control API {method} {path} -> {response.status_code}: {response.text}")
        return response.json()

    # -- portals, apps, tokens ----------------------------------------------------------------

    def create_portal(self, name: str, **body: Any) -> dict[str, Any]:
        """POST /portals (``plan``, ``seed``, ``counts``, ``smart_process_types``)."""
        body.setdefault("counts", TEST_COUNTS)
        return self._call("POST", "portals", {"name": name, **body})

    def patch_portal(self, portal: str = DEFAULT_PORTAL, **changes: Any) -> dict[str, Any]:
        """PATCH /portals/{portal} (``plan``, ``limits={...}``, ``latency_ms``, ``token_ttl_s`` …)."""
        return self._call("PATCH", f"portals/{portal}", changes)

    def register_app(self, client_id: str, client_secret: str, **body: Any) -> dict[str, Any]:
        return self._call("POST", "apps", {"client_id": client_id, "client_secret": client_secret, **body})

    def install(self, client_id: str, portal: str = DEFAULT_PORTAL,
                user_id: int | None = None) -> dict[str, Any]:
        """Install an app (POSTs its install callback); returns tokens + ``application_token``."""
        body: dict[str, Any] = {"client_id": client_id}
        if user_id is not None:
            body["user_id"] = user_id
        return self._call("POST", f"portals/{portal}/install", body)

    def install_tokens(self, portal: str = DEFAULT_PORTAL, client_id: str | None = None,
                       client_secret: str | None = None) -> dict[str, Any]:
        """A fresh token pair for an installed app, through /oauth/authorize/ and /oauth/token/."""
        client_id = client_id or self.client_id
        client_secret = client_secret or self.client_secret
        with httpx.Client(verify=self.verify, timeout=30) as client:
            answer = client.get(f"{self.portal_url(portal)}/oauth/authorize/",
                                params={"client_id": client_id})
            if answer.status_code == 302:
                code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
            elif answer.status_code == 200:
                code = answer.json()["code"]
            else:
                raise RuntimeError(f"authorize failed: {answer.status_code} {answer.text}")
            tokens = client.post(f"{self.url}/oauth/token/", data={
                "grant_type": "authorization_code", "client_id": client_id,
                "client_secret": client_secret, "code": code})
        tokens.raise_for_status()
        return tokens.json()

    def expire_tokens(self, portal: str = DEFAULT_PORTAL, client_id: str | None = None) -> int:
        body = {} if client_id is None else {"client_id": client_id}
        return self._call("POST", f"portals/{portal}/tokens/expire", body)["expired"]

    # -- faults, stats ------------------------------------------------------------------------

    def add_fault(self, method: str, kind: str, portal: str = DEFAULT_PORTAL, **options: Any) -> None:
        """Inject a fault (``rate``, ``count``, ``delay_s``, ``phase``); see `emulator.faults`."""
        self._call("POST", f"portals/{portal}/faults", {"method": method, "kind": kind, **options})

    def clear_faults(self, portal: str = DEFAULT_PORTAL) -> None:
        self._call("DELETE", f"portals/{portal}/faults")

    def add_oauth_fault(self, method: str, kind: str, **options: Any) -> None:
        """Inject a fault into the OAuth server (``method`` ``token``, ``app.info`` or ``*``)."""
        self._call("POST", "oauth/faults", {"method": method, "kind": kind, **options})

    def clear_oauth_faults(self) -> None:
        self._call("DELETE", "oauth/faults")

    def oauth_calls(self) -> dict[str, int]:
        """Requests the OAuth server has answered so far, per endpoint (``token``, ``app.info``)."""
        return self._call("GET", "oauth")["calls"]

    def stats(self, portal: str = DEFAULT_PORTAL) -> dict[str, Any]:
        return self._call("GET", f"portals/{portal}/stats")

    def reset_stats(self, portal: str = DEFAULT_PORTAL) -> None:
        self._call("DELETE", f"portals/{portal}/stats")

    # -- CRM ground truth (needs the crm half) ------------------------------------------------

    def truth(self, entity: str, portal: str = DEFAULT_PORTAL) -> list[dict[str, Any]]:
        """Every record of ``entity`` incl. deleted ones: ``{"id","deleted","modified","fields"}``."""
        return self._call("GET", f"portals/{portal}/truth/{entity}")["rows"]

    def writes(self, entity: str | None = None, portal: str = DEFAULT_PORTAL) -> list[dict[str, Any]]:
        """CRM writes received, one row per (entity, id, op, client_id, connector) with its ``count``;
        ``client_id`` is "" for UI users and webhooks."""
        path = f"portals/{portal}/writes" + (f"?entity={entity}" if entity else "")
        return self._call("GET", path)["writes"]

    def reset_writes(self, portal: str = DEFAULT_PORTAL) -> None:
        self._call("DELETE", f"portals/{portal}/writes")

    def queue(self, portal: str = DEFAULT_PORTAL) -> list[dict[str, Any]]:
        """All offline-event queue rows with all columns."""
        return self._call("GET", f"portals/{portal}/queue")["rows"]

    def write(self, entity: str, op: str, id: int | None = None, fields: dict[str, Any] | None = None,
              portal: str = DEFAULT_PORTAL) -> int:
        """A CRM change made by a UI user (so it is queued for every app); returns the record id."""
        body: dict[str, Any] = {"op": op, "fields": fields or {}}
        if id is not None:
            body["id"] = id
        return self._call("POST", f"portals/{portal}/crm/{entity}", body)["id"]

    def restore(self, entity: str, id: int, portal: str = DEFAULT_PORTAL) -> int:
        """A UI user restores a deleted record from the recycle bin: same id, new modification time,
        ``ONCRM*ADD`` queued for every app; returns the id."""
        return self._call("POST", f"portals/{portal}/crm/{entity}/{id}/restore")["id"]

    def start_activity(self, rate_per_s: float, portal: str = DEFAULT_PORTAL,
                       mix: dict[str, float] | None = None, seed: int | None = None) -> None:
        body: dict[str, Any] = {"rate_per_s": rate_per_s}
        if mix is not None:
            body["mix"] = mix
        if seed is not None:
            body["seed"] = seed
        self._call("POST", f"portals/{portal}/activity", body)

    def stop_activity(self, portal: str = DEFAULT_PORTAL) -> dict[str, Any]:
        return self._call("DELETE", f"portals/{portal}/activity")["stats"]

    def close(self) -> None:
        self.control.close()


class ThreadEmulator(RunningEmulator):
    """An emulator served from a thread of this process; ``world`` is its live state."""

    def __init__(self, url: str, options: EmulatorOptions, world: World) -> None:
        super().__init__(url, options)
        self.world = world


class ProcessEmulator(RunningEmulator):
    """An emulator in a child process that a test may kill."""

    def __init__(self, url: str, options: EmulatorOptions, process: subprocess.Popen[str]) -> None:
        super().__init__(url, options)
        self.process = process

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@contextmanager
def run_emulator(**options: Any) -> Iterator[ThreadEmulator]:
    """Serve an emulator from a background thread on a free loopback port until the block ends."""
    resolved = emulator_options(**options)
    server = start_server(resolved)
    emulator = ThreadEmulator(server.world.root_url, resolved, server.world)
    try:
        yield emulator
    finally:
        emulator.close()
        server.stop()


def _serve_args(options: EmulatorOptions) -> list[str]:
    args = ["serve", "--host", options.host, "--port", str(options.port), "--plan", options.plan,
            "--seed", str(options.seed), "--smart-process-types", str(options.smart_process_types),
            "--client-id", options.client_id, "--client-secret", options.client_secret,
            "--webhook", options.webhook, "--token-ttl", str(options.token_ttl),
            "--latency-ms", str(options.latency_ms), "--app-handler-url", options.app_handler_url]
    for flag, key in COUNT_FLAGS.items():
        args += [f"--{flag}", str(options.counts.get(key, 0))]
    if not options.limits:
        args.append("--no-limits")
    if options.ssl_certfile and options.ssl_keyfile:
        args += ["--ssl-certfile", options.ssl_certfile, "--ssl-keyfile", options.ssl_keyfile]
    return args


def _await_ready_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=0.1):
            line = process.stdout.readline()
            if line.startswith(READY_PREFIX):
                return line[len(READY_PREFIX):].strip()
            if not line and process.poll() is not None:
                break
        elif process.poll() is not None:
            break
    process.kill()
    raise RuntimeError(f"emulator process did not start (exit code {process.poll()})")


@contextmanager
def run_emulator_process(startup_timeout: float = 120.0, **options: Any) -> Iterator[ProcessEmulator]:
    """Like `run_emulator`, but ``python -m emulator serve`` in a child process (killable)."""
    resolved = emulator_options(**options)
    package_root = str(Path(__file__).resolve().parent.parent)
    python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": python_path}
    process = subprocess.Popen([sys.executable, "-m", "emulator", *_serve_args(resolved)],
                               stdout=subprocess.PIPE, text=True, env=env)
    try:
        url = _await_ready_line(process, startup_timeout)
        emulator = ProcessEmulator(url, resolved, process)
        try:
            yield emulator
        finally:
            emulator.close()
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
