"""The command line: a free port, an atomic ready file, HTTPS, and a clean exit on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from .helpers import PARAMS, seed, ws_path

OPERATOR_DIR = Path(__file__).resolve().parents[3] / "operator"


def _wait_ready(path: Path, process: subprocess.Popen[bytes], within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if path.exists():
            info: dict[str, Any] = json.loads(path.read_text())  # atomic: never half-written
            return info
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        time.sleep(0.05)
    raise AssertionError("the emulator did not become ready")


@pytest.fixture
def cli(tmp_path: Path) -> Any:
    seed_file = tmp_path / "seed.json"
    seed_file.write_text(json.dumps(seed()))
    ready = tmp_path / "ready.json"
    env = {**os.environ, "PYTHONPATH": str(OPERATOR_DIR)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchcompute_testbed.emulator",
            "--port",
            "0",
            "--ready-file",
            str(ready),
            "--tls-dir",
            str(tmp_path / "tls"),
            "--seed",
            str(seed_file),
            "--static-token",
            "cli-token",
            "--operation-seconds",
            "0.2",
            "--throttle",
            "off",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield process, ready
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_cli_serves_until_sigterm(cli: Any, tmp_path: Path) -> None:
    process, ready = cli
    info = _wait_ready(ready, process, within=15)
    assert set(info) == {
        "arm_url",
        "admin_url",
        "ca_file",
        "identity_endpoint",
        "identity_header",
        "pid",
    }
    assert info["pid"] == process.pid
    assert info["arm_url"].startswith("https://127.0.0.1:")
    assert info["admin_url"] == info["arm_url"] + "/_admin"
    assert info["identity_endpoint"] == info["arm_url"] + "/msi/token"
    assert info["ca_file"] == str(tmp_path / "tls" / "ca.pem")
    assert len(info["identity_header"]) >= 16

    trusted = ssl.create_default_context(cafile=info["ca_file"])
    with httpx.Client(verify=trusted, timeout=5) as client:
        response = client.get(
            info["arm_url"] + ws_path(),
            params=PARAMS,
            headers={"Authorization": "Bearer cli-token"},
        )
        assert response.status_code == 200
        assert client.get(info["admin_url"] + "/health").json() == {"ok": True}

    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
    assert not ready.exists()
    stderr = process.stderr.read().decode()
    assert "cli-token" not in stderr  # tokens never reach the log
    assert "Traceback" not in stderr


def test_cli_rejects_a_bad_seed(tmp_path: Path) -> None:
    seed_file = tmp_path / "seed.json"
    seed_file.write_text('{"workspaces": [{"name": "only-a-name"}]}')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "batchcompute_testbed.emulator",
            "--ready-file",
            str(tmp_path / "ready.json"),
            "--seed",
            str(seed_file),
        ],
        env={**os.environ, "PYTHONPATH": str(OPERATOR_DIR)},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert b"subscriptionId" in result.stderr
