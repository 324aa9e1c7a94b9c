"""Fixtures for the integration suite: a real kube-apiserver + etcd, and the ARM emulator.

Every test under tests/integration is marked `integration`. The control plane starts once per
pytest process. With BCO_KUBECONFIG set the suite uses that cluster instead (this is how
`make e2e` runs the same tests against kind); fixtures needing the local control plane's
extra identities are skipped there.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import kubernetes
import pytest
from kubernetes.client import ApiClient

from batchcompute_testbed.controlplane import ControlPlane
from batchcompute_testbed.controlplane.process import tail

INTEGRATION_DIR = Path(__file__).resolve().parent
REPO_ROOT = INTEGRATION_DIR.parents[1]
EMULATOR_READY_TIMEOUT = 20.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


# -- Kubernetes ------------------------------------------------------------------------------


@dataclass
class Cluster:
    """The cluster under test.

    `plane` is the local ControlPlane, or None when BCO_KUBECONFIG names an existing cluster.
    """

    kubeconfig: Path
    server: str
    plane: ControlPlane | None = None
    operator_kubeconfig: Path | None = None
    _clients: list[ApiClient] = field(default_factory=list, repr=False)

    @property
    def external(self) -> bool:
        return self.plane is None

    def client(self, kubeconfig: Path | None = None) -> ApiClient:
        """A sync ApiClient for `kubeconfig` (default: the admin), closed at session end."""
        api = kubernetes.config.new_client_from_config(
            config_file=str(kubeconfig or self.kubeconfig)
        )
        self._clients.append(api)
        return api

    def require_local(self) -> ControlPlane:
        """The local control plane; skips the test on an external cluster."""
        if self.plane is None:
            pytest.skip("needs the local control plane (BCO_KUBECONFIG is set)")
        return self.plane

    def add_user(self, name: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig for a new identity (local control plane only)."""
        user = self.require_local().add_user(name, groups)
        assert user is not None
        return user.kubeconfig

    def close(self) -> None:
        for api in self._clients:
            api.close()
        self._clients.clear()


def _server_of(kubeconfig: Path) -> str:
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(
        config_file=str(kubeconfig), client_configuration=configuration
    )
    return str(configuration.host)


@pytest.fixture(scope="session")
def controlplane() -> Iterator[Cluster]:
    """The cluster: the local etcd + kube-apiserver, or the one BCO_KUBECONFIG points at."""
    external = os.environ.get("BCO_KUBECONFIG")
    if external:
        path = Path(external).expanduser()
        cluster = Cluster(kubeconfig=path, server=_server_of(path))
        yield cluster
        cluster.close()
        return
    plane = ControlPlane()
    plane.start()
    cluster = Cluster(
        kubeconfig=plane.kubeconfig_admin,
        server=str(plane.server),
        plane=plane,
        operator_kubeconfig=plane.kubeconfig_operator,
    )
    try:
        yield cluster
    finally:
        cluster.close()
        plane.stop()


@pytest.fixture(scope="session")
def kube(controlplane: Cluster) -> ApiClient:
    """An admin ApiClient (sync)."""
    return controlplane.client()


@pytest.fixture(scope="session")
def operator_kube(controlplane: Cluster) -> ApiClient:
    """An ApiClient authenticated as the operator's ServiceAccount user (local cluster only)."""
    controlplane.require_local()
    assert controlplane.operator_kubeconfig is not None
    return controlplane.client(controlplane.operator_kubeconfig)


def _namespace_name(nodeid: str) -> str:
    test = nodeid.rsplit("::", 1)[-1]
    slug = re.sub(r"[^a-z0-9-]+", "-", test.lower()).strip("-")[:40].strip("-")
    return f"t-{slug}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(kube: ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test; its deletion is requested (not awaited) afterwards."""
    from operator_proc import temporary_namespace

    with temporary_namespace(kube, _namespace_name(request.node.nodeid),
                             {"batchcompute.testbed/test-namespace": "true"}) as name:
        yield name


# -- ARM emulator -----------------------------------------------------------------------------


# The emulator's settings as the `emulator` fixture starts it (see its command line).
SESSION_CONFIG = {"operation_seconds": 1, "retry_after_seconds": 1, "throttle": None}


@dataclass
class Emulator:
    """A running ARM emulator, with helpers for its admin API."""

    arm_url: str
    admin_url: str
    ca_file: str
    identity_endpoint: str
    identity_header: str
    pid: int
    info: dict[str, Any]
    log_file: Path
    _tls: ssl.SSLContext = field(init=False, repr=False)
    _admin: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Routes below are absolute (/_admin/...), whether or not admin_url names the prefix.
        base = self.admin_url.rstrip("/").removesuffix("/_admin")
        self._tls = ssl.create_default_context(cafile=self.ca_file)
        self._admin = httpx.Client(base_url=base, verify=self._tls, timeout=10.0)

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._admin.request(method, path, **kwargs)
        if response.is_error:
            raise AssertionError(
                f"emulator admin {method} {path} -> {response.status_code}: {response.text}"
            )
        return response

    def seed(self, data: dict[str, Any]) -> Any:
        return self._call("POST", "/_admin/seed", json=data).json()

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call(
            "GET", "/_admin/requests", params={"since": since}
        ).json()
        return result

    def clear_requests(self) -> None:
        self._call("DELETE", "/_admin/requests")

    def add_fault(self, fault: dict[str, Any]) -> Any:
        return self._call("POST", "/_admin/faults", json=fault).json()

    def clear_faults(self) -> None:
        self._call("DELETE", "/_admin/faults")

    def set_config(self, config: dict[str, Any]) -> Any:
        return self._call("POST", "/_admin/config", json=config).json()

    def restore(self) -> None:
        """Faults, settings and the identity endpoint back to how the session started them."""
        self.clear_faults()
        self.set_config(SESSION_CONFIG)
        self._call("POST", "/_admin/identity", json={"fail": False})

    def mint_token(self, expires_in: float = 3600) -> str:
        body = self._call("POST", "/_admin/tokens", json={"expires_in": expires_in}).json()
        return str(body["access_token"])

    def computes(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/_admin/computes").json()
        return result

    def operations(self) -> list[dict[str, Any]]:
        """Every long-running operation, with its action, compute and start/end times."""
        result: list[dict[str, Any]] = self._call("GET", "/_admin/operations").json()
        return result

    def arm(self, token: str | None = None) -> httpx.Client:
        """An httpx client for the ARM endpoint (caller closes), with a bearer token if given."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.arm_url, verify=self._tls, headers=headers, timeout=10.0)

    def close(self) -> None:
        self._admin.close()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    operator_dir = str(REPO_ROOT / "operator")
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if operator_dir not in paths:
        paths.insert(0, operator_dir)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _read_ready(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not there yet, or half written
    return data if isinstance(data, dict) else None


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """The ARM emulator as a subprocess (TLS, 1 s operations, no throttling)."""
    workdir = tmp_path_factory.mktemp("emulator")
    ready_file = workdir / "ready.json"
    log_file = workdir / "emulator.log"
    argv = [
        sys.executable, "-m", "batchcompute_testbed.emulator",
        "--port", "0",
        "--ready-file", str(ready_file),
        "--tls-dir", str(workdir / "tls"),
        "--operation-seconds", "1",
        "--throttle", "off",
    ]  # fmt: skip
    with log_file.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env=_child_env(),
        )
    try:
        deadline = time.monotonic() + EMULATOR_READY_TIMEOUT
        info = _read_ready(ready_file)
        while info is None:
            if proc.poll() is not None:
                pytest.fail(
                    f"emulator exited with {proc.returncode} before it was ready:\n"
                    f"{tail(log_file, 60)}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"emulator not ready within {EMULATOR_READY_TIMEOUT:.0f}s:\n"
                    f"{tail(log_file, 60)}"
                )
            time.sleep(0.05)
            info = _read_ready(ready_file)
        emu = Emulator(
            arm_url=str(info["arm_url"]),
            admin_url=str(info["admin_url"]),
            ca_file=str(info["ca_file"]),
            identity_endpoint=str(info.get("identity_endpoint", "")),
            identity_header=str(info.get("identity_header", "")),
            pid=int(info.get("pid", proc.pid)),
            info=info,
            log_file=log_file,
        )
        try:
            yield emu
        finally:
            emu.close()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- the operator under test -----------------------------------------------------------------

@pytest.fixture(scope="session")
def installed(controlplane: Cluster) -> Cluster:
    """The CRD and the operator's RBAC from deploy/, applied as a cluster admin would."""
    from batchcompute_testbed.stack import install

    install(controlplane.kubeconfig)
    return controlplane


@pytest.fixture
def workspace(emulator: Emulator) -> Any:
    from operator_proc import Workspace

    return Workspace.fresh(emulator)


@pytest.fixture
def restore_emulator(emulator: Emulator) -> Iterator[None]:
    """For modules that change the shared emulator: `Emulator.restore()` after each test,
    whatever its outcome (`pytestmark = pytest.mark.usefixtures("restore_emulator")`)."""
    try:
        yield
    finally:
        emulator.restore()


@pytest.fixture
def attachments(kube: ApiClient, namespace: str) -> Any:
    from operator_proc import Attachments

    return Attachments(kube, namespace)


@pytest.fixture
def start_operator(installed: Cluster, emulator: Emulator, namespace: str,
                   tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Start (and at the end stop) operator processes for the test's namespace.

    The operator authenticates as its ServiceAccount, bound by deploy/'s RBAC, so a missing
    permission fails here. Its log is printed when the test fails.
    """
    from operator_proc import OperatorProcess, Operators, failed

    operators = Operators(installed.operator_kubeconfig or installed.kubeconfig, emulator,
                          tmp_path)

    def start(*, verbose: bool = True, **env: str) -> OperatorProcess:
        return operators.start((namespace,), verbose=verbose, **env)

    yield start
    operators.finish(failed(request))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


# -- the Kubernetes fault proxy --------------------------------------------------------------


@pytest.fixture(scope="session")
def kube_proxy_server(installed: Cluster,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One fault proxy in front of the local kube-apiserver for the whole session."""
    from batchcompute_testbed.kubeproxy import KubeProxy

    plane = installed.require_local()
    assert plane.server is not None and plane.ca_file is not None
    proxy = KubeProxy(plane.server, plane.ca_file, tmp_path_factory.mktemp("kubeproxy"))
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def kube_proxy(kube_proxy_server: Any) -> Iterator[Any]:
    """The fault proxy with no fault set, and none left set after the test, whatever its
    outcome."""
    kube_proxy_server.clear()
    try:
        yield kube_proxy_server
    finally:
        kube_proxy_server.clear()


@pytest.fixture
def start_operator_via_proxy(kube_proxy: Any, installed: Cluster, emulator: Emulator,
                             namespace: str, tmp_path: Path,
                             request: pytest.FixtureRequest) -> Iterator[Any]:
    """`start_operator`, with the operator's ServiceAccount kubeconfig pointed at the fault
    proxy: the operator's every request to the API server (kopf's and its own) goes through
    it, while the tests' admin client talks to the API server directly."""
    from operator_proc import OperatorProcess, Operators, failed

    assert installed.operator_kubeconfig is not None
    kubeconfig = kube_proxy.kubeconfig(installed.operator_kubeconfig,
                                       tmp_path / "operator-via-proxy.kubeconfig")
    operators = Operators(kubeconfig, emulator, tmp_path)

    def start(**env: str) -> OperatorProcess:
        return operators.start((namespace,), **env)

    yield start
    operators.finish(failed(request))
