"""A modern apiextensions-apiserver beside the test bed's v1.20 kube-apiserver, for CEL.

The test bed's kube-apiserver is v1.20: it never compiles, cost-checks or enforces the CRD's
`x-kubernetes-validations`. `hack/build-apiextensions-apiserver.sh` builds the CRD half of a
current kube-apiserver (k8s.io/apiextensions-apiserver, from Debian sid's Go packages); this
module runs it:

    with ControlPlane() as core, ExtensionsServer(core) as ext:
        ext.install_crds()          # crds/ as shipped: each rule compiled and cost-checked
        ext.create(namespace, obj)  # or the Python client with ext.kubeconfig

It serves only `/apis/apiextensions.k8s.io` and the custom resources. Authentication
(TokenReview), authorization (SubjectAccessReview; `system:masters` is always allowed) and
the namespaces that admission checks come from the core ControlPlane, whose etcd it shares
under a key prefix of its own. Its admission has no policy plugins and it runs without
priority and fairness: v1.20 serves neither API. kubectl's discovery wants `/api`, which
this server does not serve, so use the Python client or `kubectl get --raw` with it.

If the server cannot be built (Debian sid moved on and the build broke), `start()` raises
`ApiextensionsUnavailable` whose message is the script's one-line reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

from batchcompute_testbed.controlplane.cluster import (
    ADMIN_USERNAME,
    HOST,
    ControlPlane,
    ControlPlaneError,
    _ReadyProbe,
    _write_atomic,
    kubeconfig_document,
    repo_root,
)
from batchcompute_testbed.controlplane.process import ManagedProcess, free_ports

UNAVAILABLE_PREFIX = "apiextensions-apiserver unavailable:"
BUILD_SCRIPT = "hack/build-apiextensions-apiserver.sh"
# Admission plugins whose APIs a v1.20 core server does not serve; left on, they never sync.
DISABLED_ADMISSION = ("ValidatingAdmissionPolicy", "MutatingAdmissionPolicy")


class ApiextensionsUnavailable(ControlPlaneError):
    """The apiextensions-apiserver could not be built; the message is one line saying why."""


_found: Path | ApiextensionsUnavailable | None = None


def find_apiextensions_apiserver() -> Path:
    """The binary: `$BCO_APIEXTENSIONS_APISERVER`, else what the build script prints.

    The script builds on first use (about 6 minutes) and remembers a failed build for some
    hours; the verdict is also kept for the life of this process.
    """
    global _found
    override = os.environ.get("BCO_APIEXTENSIONS_APISERVER")
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ControlPlaneError(
                f"BCO_APIEXTENSIONS_APISERVER={override} is not an executable file")
        return path
    if _found is None:
        _found = _run_build_script()
    if isinstance(_found, ApiextensionsUnavailable):
        raise _found
    return _found


def _run_build_script() -> Path | ApiextensionsUnavailable:
    script = repo_root() / BUILD_SCRIPT
    if not script.is_file():
        return ApiextensionsUnavailable(f"{UNAVAILABLE_PREFIX} {script} not found")
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    out = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if result.returncode == 0 and out:
        path = Path(out[-1])
        if path.is_file() and os.access(path, os.X_OK):
            return path
    errors = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    reason = next((line for line in reversed(errors) if line.startswith(UNAVAILABLE_PREFIX)),
                  None)
    if reason is None:
        detail = errors[-1] if errors else f"exit code {result.returncode}"
        reason = f"{UNAVAILABLE_PREFIX} {BUILD_SCRIPT} failed: {detail}"
    return ApiextensionsUnavailable(reason)


@dataclass(frozen=True)
class Response:
    """An API server answer: the HTTP status and the decoded JSON body."""

    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        """The Status message of a refusal ("" for a success)."""
        return "" if self.ok else str(self.body.get("message", ""))


class ExtensionsServer:
    """apiextensions-apiserver on a random loopback port, delegating to a core ControlPlane.

    Use as a context manager, or call `start()` and `stop()`. Without `core` it starts (and
    later stops) a ControlPlane of its own. After `start()`: `server` is the URL, `ca_file`
    its certificate bundle, `kubeconfig` an admin kubeconfig for it, and `request()`,
    `create()`, `update()`, `delete()` talk to it as the admin.
    """

    def __init__(
        self,
        core: ControlPlane | None = None,
        *,
        binary: str | Path | None = None,
        startup_timeout: float = 60.0,
        stop_grace: float = 10.0,
        port_attempts: int = 4,
        die_with_parent: bool = True,
    ) -> None:
        self._core = core
        self._owns_core = False
        self._binary = Path(binary) if binary else None
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.port_attempts = port_attempts
        self.die_with_parent = die_with_parent
        self.etcd_prefix = f"/bco-apiextensions-{secrets.token_hex(4)}"
        self.server: str | None = None
        self.ca_file: Path | None = None
        self.kubeconfig: Path | None = None
        self.startup_seconds: float | None = None
        self._dir: Path | None = None
        self._proc: ManagedProcess | None = None
        self._http: httpx.Client | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> ExtensionsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def started(self) -> bool:
        return self.server is not None

    @property
    def core(self) -> ControlPlane:
        if self._core is None:
            raise ControlPlaneError("the apiextensions-apiserver has not been started")
        return self._core

    def start(self) -> ExtensionsServer:
        if self.started or self._proc is not None:
            raise ControlPlaneError("the apiextensions-apiserver is already started")
        binary = self._binary or find_apiextensions_apiserver()
        began = time.monotonic()
        if self._core is None:
            self._core = ControlPlane()
            self._owns_core = True
        try:
            if not self._core.started:
                self._core.start()
            self._start(binary, began + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _argv(self, binary: Path, port: int) -> list[str]:
        core = self.core
        assert self._dir is not None
        admin = str(core.kubeconfig_admin)
        return [
            str(binary),
            f"--etcd-servers={core.etcd_url}",
            f"--etcd-prefix={self.etcd_prefix}",
            f"--secure-port={port}",
            f"--bind-address={HOST}",
            f"--cert-dir={self._dir / 'certs'}",
            f"--kubeconfig={admin}",
            f"--authentication-kubeconfig={admin}",
            f"--authorization-kubeconfig={admin}",
            "--authentication-skip-lookup",
            f"--disable-admission-plugins={','.join(DISABLED_ADMISSION)}",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
        ]

    def _start(self, binary: Path, deadline: float) -> None:
        core = self.core
        assert core.run_dir is not None
        self._dir = core.run_dir / f"apiextensions-{self.etcd_prefix.rsplit('-', 1)[1]}"
        self._dir.mkdir(exist_ok=True)
        token = core.admin.token
        assert token is not None
        for attempt in range(1, self.port_attempts + 1):
            (port,) = free_ports(1)
            proc = ManagedProcess("apiextensions-apiserver", self._argv(binary, port),
                                  self._dir / "apiextensions-apiserver.log",
                                  die_with_parent=self.die_with_parent)
            self._proc = proc
            proc.start()
            server = f"https://{HOST}:{port}"
            probe = _ReadyProbe(server, self._dir / "certs" / "apiserver.crt", token)
            if ControlPlane._wait(proc, probe, deadline):
                self.server = server
                self.ca_file = probe.ca_file
                break
            proc.stop(self.stop_grace)
            if not (proc.address_in_use() and attempt < self.port_attempts):
                detail = f" (last probe: {probe.last_error})" if probe.last_error else ""
                raise ControlPlaneError(
                    f"apiextensions-apiserver did not become ready{detail}\n{proc.describe()}")
        assert self.server is not None and self.ca_file is not None
        self.kubeconfig = self._dir / "admin.kubeconfig"
        doc = kubeconfig_document(server=self.server, ca_pem=self.ca_file.read_bytes(),
                                  user=ADMIN_USERNAME, token=token)
        _write_atomic(self.kubeconfig, json.dumps(doc, indent=2) + "\n")
        context = ssl.create_default_context(cafile=str(self.ca_file))
        self._http = httpx.Client(base_url=self.server, verify=context, timeout=30.0,
                                  headers={"Authorization": f"Bearer {token}"})

    def stop(self) -> None:
        """Stop the server (and the core ControlPlane if this object started it); idempotent."""
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._proc is not None:
            self._proc.stop(self.stop_grace)
            self._proc = None
        self.server = None
        if self._owns_core and self._core is not None:
            self._core.stop()
            self._core = None
            self._owns_core = False

    def check_alive(self) -> None:
        if self._proc is None or not self._proc.running():
            detail = self._proc.describe() if self._proc else ""
            raise ControlPlaneError(f"the apiextensions-apiserver is not running\n{detail}")

    def log_tail(self, lines: int = 40) -> str:
        return self._proc.describe(lines) if self._proc else ""

    # -- requests -----------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None,
                params: Mapping[str, str] | None = None,
                content_type: str = "application/json") -> Response:
        """One API call as the admin; any HTTP status is returned, not raised."""
        if self._http is None:
            raise ControlPlaneError("the apiextensions-apiserver has not been started")
        content = None if body is None else json.dumps(body)
        response = self._http.request(method, path, content=content, params=params,
                                      headers={"Content-Type": content_type})
        try:
            decoded = response.json()
        except ValueError:
            decoded = {"message": response.text}
        return Response(response.status_code, decoded if isinstance(decoded, dict) else {})

    def version(self) -> dict[str, Any]:
        return self.request("GET", "/version").body

    @staticmethod
    def resource_path(obj: Mapping[str, Any], plural: str, namespace: str | None) -> str:
        group_version = str(obj["apiVersion"])
        where = f"/namespaces/{namespace}" if namespace else ""
        return f"/apis/{group_version}{where}/{plural}"

    def create(self, plural: str, obj: Mapping[str, Any], namespace: str | None = None,
               *, dry_run: bool = False) -> Response:
        params = {"dryRun": "All"} if dry_run else None
        return self.request("POST", self.resource_path(obj, plural, namespace), obj,
                            params=params)

    def update(self, plural: str, obj: Mapping[str, Any],
               namespace: str | None = None) -> Response:
        name = obj["metadata"]["name"]
        return self.request("PUT", f"{self.resource_path(obj, plural, namespace)}/{name}", obj)

    def delete(self, plural: str, obj: Mapping[str, Any],
               namespace: str | None = None) -> Response:
        name = obj["metadata"]["name"]
        return self.request("DELETE", f"{self.resource_path(obj, plural, namespace)}/{name}")

    # -- CRDs ---------------------------------------------------------------------------

    def install_crd(self, crd: Mapping[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Create a CRD and wait until it is Established and its resources are served.

        The API server compiles every CEL rule and estimates its cost when the CRD is
        created, so a rule it would not run is refused here: CrdRefused carries its message.
        """
        answer = self.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                              crd)
        if not answer.ok:
            raise CrdRefused(answer.status, answer.message)
        name = crd["metadata"]["name"]
        spec = crd["spec"]
        served = next(v["name"] for v in spec["versions"] if v.get("served"))
        listing = f"/apis/{spec['group']}/{served}/{spec['names']['plural']}"
        deadline = time.monotonic() + timeout
        established = False
        while time.monotonic() < deadline:
            if not established:
                current = self.request(
                    "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
                status = current.body.get("status") or {}
                conditions = {c.get("type"): c.get("status")
                              for c in status.get("conditions") or []}
                established = conditions.get("Established") == "True"
            if established and self.request("GET", listing).ok:
                return current.body
            time.sleep(0.1)
        raise ControlPlaneError(f"CRD {name} was not served within {timeout:.0f}s")

    def install_crds(self, directory: Path | None = None) -> list[str]:
        """Install every CRD in `directory` (default: the repository's crds/), as shipped."""
        names = []
        for path in sorted((directory or repo_root() / "crds").glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    self.install_crd(doc)
                    names.append(str(doc["metadata"]["name"]))
        return names

    def uninstall_crd(self, name: str) -> None:
        self.request("DELETE", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")


class CrdRefused(ControlPlaneError):
    """The API server refused a CustomResourceDefinition (a rule that does not compile, or
    that is over the cost budget, among other reasons)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


@contextlib.contextmanager
def running_extensions(core: ControlPlane | None = None, **options: Any
                       ) -> Iterator[ExtensionsServer]:
    """`with running_extensions(plane) as ext:` — start, yield, stop."""
    with ExtensionsServer(core, **options) as server:
        yield server
