"""Fixtures for the SDK v1 interop tests: an isolated network, azureml-core's interpreter, the
emulator and an SDK v1 user.

azureml-core reaches for Azure hosts by itself (cloud metadata, telemetry, whatever its next
release adds), so these tests run only where no packet can leave loopback: a network namespace
with nothing but `lo` (`make test-interop` makes one with `unshare --net`). Anywhere else every
test fails at once; there is no fallback to the real network.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchcompute_testbed.stack import EmulatorProcess

from .sdkv1 import SdkV1

INTEROP_DIR = Path(__file__).resolve().parent
REPO_ROOT = INTEROP_DIR.parents[1]
SUBSCRIPTION = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
WORKSPACE = {
    "subscriptionId": SUBSCRIPTION,
    "resourceGroup": "rg-ml",
    "name": "ws-sdkv1",
    "location": "westeurope",
}
BATCH_ACCOUNT = {
    "subscriptionId": SUBSCRIPTION,
    "resourceGroup": "rg-batch",
    "name": "batchacct1",
    "location": "northeurope",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "interop: drives azureml-core against the emulator (network namespace only)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEROP_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.interop)


def network_interfaces() -> list[str]:
    """The interfaces of this process's network namespace (not /sys, which may be the host's)."""
    return sorted(name for _, name in socket.if_nameindex())


@pytest.fixture(scope="session", autouse=True)
def isolated_network() -> None:
    interfaces = network_interfaces()
    if interfaces != ["lo"]:
        pytest.fail(
            "the SDK v1 interop tests must run in a network namespace of their own, where no "
            f"packet can leave loopback; this one has {interfaces}. Run `make test-interop`, "
            "or: unshare --net -- sh -c 'ip link set lo up && pytest tests/interop'",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def sdkv1_python(isolated_network: None) -> Path:
    """azureml-core's interpreter: $BCO_SDKV1_PYTHON, else the cached one hack/sdkv1-venv.sh
    made (it cannot be built from in here: the package index is out of reach)."""
    named = os.environ.get("BCO_SDKV1_PYTHON")
    if not named:
        done = subprocess.run(
            ["bash", str(REPO_ROOT / "hack" / "sdkv1-venv.sh")],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"no SDK v1 virtualenv (make test-interop builds it):\n{done.stderr}")
        named = done.stdout.strip().splitlines()[-1]
    python = Path(named)
    if not python.exists():
        pytest.fail(f"BCO_SDKV1_PYTHON names no interpreter: {python}")
    return python


class Emulator:
    """The emulator process, with its admin API at hand."""

    def __init__(self, process: EmulatorProcess) -> None:
        self.process = process
        self.ready_file = process.workdir / "emulator.json"
        self.arm_url = process.arm_url
        self._admin = httpx.Client(
            base_url=f"{self.arm_url}/_admin",
            verify=ssl.create_default_context(cafile=str(process.info["ca_file"])),
            timeout=30,
        )

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._admin.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def configure(self, **settings: Any) -> None:
        self.admin("POST", "/config", json=settings)

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.admin("GET", "/requests", params={"since": since})
        return result

    def last_seq(self) -> int:
        entries = self.requests()
        return int(entries[-1]["seq"]) if entries else 0

    def close(self) -> None:
        self._admin.close()
        self.process.stop()


@pytest.fixture(scope="module")
def emulator(
    isolated_network: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Emulator]:
    process = EmulatorProcess(
        tmp_path_factory.mktemp("emulator"),
        ["--throttle", "off"],
        {"workspaces": [WORKSPACE], "batchAccounts": [BATCH_ACCOUNT]},
    ).start()
    running = Emulator(process)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def sdkv1(sdkv1_python: Path, emulator: Emulator, tmp_path: Path) -> SdkV1:
    return SdkV1(
        python=sdkv1_python,
        ready_file=emulator.ready_file,
        home=tmp_path / "home",
        subscription=SUBSCRIPTION,
        resource_group=str(WORKSPACE["resourceGroup"]),
        workspace=str(WORKSPACE["name"]),
    )
