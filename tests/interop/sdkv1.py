"""Run SDK v1 steps (tests/interop/sdkv1_driver.py) from the project's pytest, one process each.

A step is a subprocess of the SDK v1 interpreter; its answer is the JSON object the driver
prints. The environment is stripped of what could send azureml-core elsewhere (proxies, its own
AZUREML_* settings, an Azure CLI profile): HOME is a directory of the test's own.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DRIVER = Path(__file__).resolve().with_name("sdkv1_driver.py")
STEP_TIMEOUT = 120.0
_DROPPED_PREFIXES = ("AZUREML_", "AZURE_", "MSI_", "IDENTITY_", "REQUESTS_CA_BUNDLE", "PYTHON")
_DROPPED = {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "CURL_CA_BUNDLE", "SSL_CERT_FILE"}


class StepFailed(AssertionError):
    """A step the test expected to succeed did not; carries the SDK's own message."""


@dataclass
class SdkV1:
    """One SDK v1 user of one workspace, against the emulator described by `ready_file`."""

    python: Path
    ready_file: Path
    home: Path
    subscription: str
    resource_group: str
    workspace: str

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_DROPPED_PREFIXES) and k.upper() not in _DROPPED
        }
        self.home.mkdir(parents=True, exist_ok=True)
        env.update(HOME=str(self.home), PYTHONNOUSERSITE="1", NO_PROXY="*")
        return env

    def run(self, step: str, *args: str, expect_ok: bool = True) -> dict[str, Any]:
        """Run one step; its JSON answer, with "ok" false and the SDK's error when it raised."""
        argv = [
            str(self.python),
            str(DRIVER),
            "--emulator",
            str(self.ready_file),
            "--subscription",
            self.subscription,
            "--resource-group",
            self.resource_group,
            "--workspace",
            self.workspace,
            step,
            *args,
        ]
        done = subprocess.run(
            argv,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        )
        lines = done.stdout.strip().splitlines()
        if not lines:
            raise StepFailed(f"sdkv1 {step}: no answer (exit {done.returncode})\n{done.stderr}")
        result: dict[str, Any] = json.loads(lines[-1])
        if expect_ok and not result.get("ok"):
            raise StepFailed(
                f"sdkv1 {step} failed: {result.get('error')}: {result.get('message')}\n"
                f"{result.get('traceback', '')}\n{done.stderr[-3000:]}"
            )
        return result
