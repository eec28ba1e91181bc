"""The stable command line (contract "CLI"): `python -m emulator serve` in a child process announces
its URL and serves; `python -m emulator ctl` drives the control API and prints its JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx

from emulator.cli import main
from emulator.testing import run_emulator_process


def test_serve_in_a_child_process_serves_the_default_portal_and_dies_on_kill():
    with run_emulator_process(limits=False, plan="standard", deals=3) as emu:
        feature = httpx.get(emu.webhook_url + "feature.get", params={"CODE": "rest_auth_connector"})
        assert feature.json()["result"] == {"value": "N"}
        tokens = emu.install_tokens()
        profile = httpx.get(f"{emu.url}/rest/profile", params={"auth": tokens["access_token"]})
        assert profile.status_code == 200
        assert len(emu.truth("deal")) == 3
        emu.kill()
        assert emu.process.returncode is not None


def test_python_m_emulator_ctl_prints_the_control_api_answer(emu):
    done = subprocess.run([sys.executable, "-m", "emulator", "ctl", "--url", emu.url, "portal", "list"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert json.loads(done.stdout) == [{"name": "default", "plan": "professional", "base_url": emu.url,
                                        "member_id": emu.world.portal("default").member_id}]


def _ctl(capsys, url, *args):
    code = main(["ctl", "--url", url, *args])
    return code, json.loads(capsys.readouterr().out)


def test_ctl_creates_patches_and_inspects_portals(capsys, emu):
    code, created = _ctl(capsys, emu.url, "portal", "create", "acme", "--plan", "enterprise", "--deals", "2")
    assert code == 0 and created["base_url"] == f"{emu.url}/acme"
    code, patched = _ctl(capsys, emu.url, "portal", "patch", "acme", "--limits", "off", "--latency-ms", "5")
    assert code == 0 and patched["limits"]["enabled"] is False and patched["latency_ms"] == 5
    code, fault = _ctl(capsys, emu.url, "fault", "-p", "acme", "add", "crm.deal.list", "http_500", "--count", "1")
    assert code == 0 and fault["faults"][0]["kind"] == "http_500"
    code, stats = _ctl(capsys, emu.url, "stats", "-p", "acme")
    assert code == 0 and stats["http_requests"] == 0
    code, missing = _ctl(capsys, emu.url, "stats", "-p", "nowhere")
    assert code == 1 and "nowhere" in missing["error"]


def test_ctl_installs_writes_and_reads_the_truth(capsys, emu):
    code, tokens = _ctl(capsys, emu.url, "install", emu.client_id)
    assert code == 0 and {"access_token", "refresh_token", "application_token"} <= set(tokens)
    code, written = _ctl(capsys, emu.url, "write", "deal", "add", "--fields", '{"TITLE": "From the CLI"}')
    assert code == 0
    code, truth = _ctl(capsys, emu.url, "truth", "deal")
    assert any(row["id"] == written["id"] and row["fields"]["TITLE"] == "From the CLI" for row in truth["rows"])
    code, expired = _ctl(capsys, emu.url, "expire-tokens", "--client-id", emu.client_id)
    assert code == 0 and expired["expired"] >= 1
