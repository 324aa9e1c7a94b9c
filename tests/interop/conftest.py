"""Fixtures for the SDK v1 interop tests: an isolated network, azureml-core's interpreter, the
emulator and an SDK v1 user; and, for the tests that run SDK v1 beside the operator, the test
bed's control plane and the operator itself, from the integration suite's own fixtures and
helpers (tests/integration: conftest.py, operator_proc.py), started inside the same network
namespace.

azureml-core reaches for Azure hosts by itself (cloud metadata, telemetry, whatever its next
release adds), so these tests run only where no packet can leave loopback: a network namespace
with nothing but `lo` (`make test-interop` makes one with `unshare --net`). Anywhere else every
test fails at once; there is no fallback to the real network.
"""

from __future__ import annotations

import os
import secrets
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes.client import ApiClient
from tests.integration.conftest import (  # the integration suite's fixtures, reused as they are
    Cluster,
    controlplane,
    installed,
    kube,
    pytest_runtest_makereport,
)

from batchcompute_testbed.stack import EmulatorProcess

from .sdkv1 import SdkV1

INTEROP_DIR = Path(__file__).resolve().parent
REPO_ROOT = INTEROP_DIR.parents[1]
# operator_proc.py imports waiting.py as a top-level module: the integration suite's directory
# is on sys.path when pytest runs that suite, and here too.
sys.path.insert(0, str(REPO_ROOT / "tests" / "integration"))
from operator_proc import OperatorProcess, failed, temporary_namespace  # noqa: E402

__all__ = ["controlplane", "installed", "kube", "pytest_runtest_makereport"]
# The operator acts with a token of its own principal, so the emulator's request log tells its
# calls from SDK v1's (whose tokens come from the managed-identity endpoint).
OPERATOR_PRINCIPAL = "batchcompute-operator"
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

    # What the integration suite's helpers (tests/integration/operator_proc.py) use.

    @property
    def ca_file(self) -> str:
        return str(self.process.info["ca_file"])

    @property
    def identity_endpoint(self) -> str:
        return str(self.process.info["identity_endpoint"])

    @property
    def identity_header(self) -> str:
        return str(self.process.info["identity_header"])

    def seed(self, data: dict[str, Any]) -> Any:
        return self.admin("POST", "/seed", json=data)

    def computes(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.admin("GET", "/computes")
        return result

    def mint_token(self, principal: str, expires_in: float = 7200) -> str:
        body = self.admin("POST", "/tokens", json={"principal": principal,
                                                   "expires_in": expires_in})
        return str(body["access_token"])

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


# -- the operator beside SDK v1 ----------------------------------------------------------------


@pytest.fixture(scope="module")
def operator_namespace(kube: ApiClient) -> Iterator[str]:
    """The namespace the module's operator serves; its deletion is requested afterwards."""
    with temporary_namespace(kube, f"interop-{secrets.token_hex(3)}") as name:
        yield name


@pytest.fixture(scope="module")
def running_operator(
    installed: Cluster,
    emulator: Emulator,
    operator_namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """`python -m batchcompute_operator` as its ServiceAccount (deploy/'s RBAC), serving
    `operator_namespace`, against the module's emulator; one for the whole module."""
    workdir = tmp_path_factory.mktemp("operator")
    token_file = workdir / "token"
    token_file.write_text(emulator.mint_token(OPERATOR_PRINCIPAL))
    token_file.chmod(0o600)
    process = OperatorProcess(
        installed.operator_kubeconfig or installed.kubeconfig,
        emulator,
        (operator_namespace,),
        workdir / "operator.log",
        env_overrides={"BCO_CREDENTIAL": "static-file", "BCO_STATIC_TOKEN_FILE": str(token_file)},
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def operator(
    running_operator: OperatorProcess, request: pytest.FixtureRequest
) -> Iterator[OperatorProcess]:
    """The module's operator; the end of its log is printed when the test fails."""
    start = len(running_operator.log())
    yield running_operator
    if failed(request):
        print(f"---- operator log during the test ----\n{running_operator.log()[start:][-20000:]}")
