"""The stable command line (contract "CLI"): `python -m emulator serve` in a child process announces
its URL and serves; `python -m emulator ctl` drives the control API and prints its JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx

from emulator.testing import run_emulator_process


def _ctl(url, *args):
    done = subprocess.run([sys.executable, "-m", "emulator", "ctl", "--url", url, *args],
                          capture_output=True, text=True, timeout=60)
    return done.returncode, json.loads(done.stdout)


def test_serve_in_a_child_process_serves_the_default_portal_and_dies_on_kill():
    with run_emulator_process(limits=False, plan="standard", deals=3) as emu:
        assert httpx.get(emu.webhook_url + "feature.get", params={"CODE": "rest_auth_connector"}
                         ).json()["result"] == {"value": "N"}
        tokens = emu.install_tokens()
        profile = httpx.get(f"{emu.url}/rest/profile", params={"auth": tokens["access_token"]})
        assert profile.status_code == 200
        emu.kill()
        assert emu.process.returncode is not None


def test_ctl_creates_patches_and_inspects_portals():
    with run_emulator_process(limits=True) as emu:
        code, created = _ctl(emu.url, "portal", "create", "acme", "--plan", "enterprise", "--deals", "2")
        assert code == 0 and created["base_url"] == f"{emu.url}/acme"
        code, patched = _ctl(emu.url, "portal", "patch", "acme", "--limits", "off", "--latency-ms", "5")
        assert code == 0 and patched["limits"]["enabled"] is False and patched["latency_ms"] == 5
        code, fault = _ctl(emu.url, "fault", "-p", "acme", "add", "crm.deal.list", "http_500", "--count", "1")
        assert code == 0 and fault["faults"][0]["kind"] == "http_500"
        code, stats = _ctl(emu.url, "stats", "-p", "acme")
        assert code == 0 and stats["http_requests"] == 0
        code, missing = _ctl(emu.url, "stats", "-p", "nowhere")
        assert code == 1 and "nowhere" in missing["error"]
