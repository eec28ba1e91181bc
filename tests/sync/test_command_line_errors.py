"""The command-line tools refuse a missing configuration with a usage error that says what to set,
never a traceback, and never print a secret they were given."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

KEYS = ("B24_CLIENT_ID", "B24_CLIENT_SECRET", "B24_STATE_STORE", "B24_OAUTH_TOKEN_URL")


def run(module: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {name: value for name, value in os.environ.items() if name not in KEYS}
    return subprocess.run([sys.executable, "-m", module, *args], env={**clean, **env}, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(("module", "args", "env", "says"), [
    ("connectors.sync", ["--portal", "p", "--warehouse", "wh.duckdb"], {}, "B24_CLIENT_ID and B24_CLIENT_SECRET"),
    ("connectors.sync", ["--portal", "p", "--warehouse", "wh.duckdb"], {"B24_CLIENT_ID": "app"},
     "set B24_CLIENT_SECRET"),
    ("connectors.sync", ["--portal", "p", "--warehouse", "wh.duckdb"],
     {"B24_CLIENT_ID": "app", "B24_CLIENT_SECRET": "s3cr3t-value"}, "--state-store"),
    ("connectors.receiver", ["--public-url", "https://example.com"],
     {"B24_CLIENT_ID": "app", "B24_CLIENT_SECRET": "s3cr3t-value"}, "set B24_STATE_STORE"),
], ids=["no-keys", "no-secret", "no-state-store", "receiver-no-state-store"])
def test_a_missing_setting_is_a_usage_error_naming_it(module, args, env, says, tmp_path) -> None:
    done = run(module, *args, **env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert says in done.stderr and "Traceback" not in done.stderr
    assert "s3cr3t-value" not in done.stderr + done.stdout
