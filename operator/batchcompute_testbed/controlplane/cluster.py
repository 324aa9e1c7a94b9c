"""A local Kubernetes control plane (etcd + kube-apiserver) on loopback, for tests and demos."""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import functools
import json
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from batchcompute_testbed.controlplane.certs import (
    ClientCA,
    ClientCertificate,
    write_service_account_keys,
)
from batchcompute_testbed.controlplane.process import ManagedProcess, free_ports

OPERATOR_NAMESPACE = "batchcompute-system"
OPERATOR_SERVICE_ACCOUNT = "batchcompute-operator"
OPERATOR_USERNAME = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}"
OPERATOR_GROUPS = (
    "system:serviceaccounts",
    f"system:serviceaccounts:{OPERATOR_NAMESPACE}",
    "system:authenticated",
)
ADMIN_USERNAME = "testbed-admin"
ADMIN_GROUPS = ("system:masters", "system:authenticated")

HOST = "127.0.0.1"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
# Reads are left out: what the audit log is for (counting who wrote what) needs only the
# writes, and logging every watch and GET in blocking mode slows the API server down.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    verbs: ["get", "list", "watch"]
  - level: Metadata
"""

_KUBECONFIG_STEMS = {ADMIN_USERNAME: "admin", OPERATOR_USERNAME: "operator"}


class ControlPlaneError(RuntimeError):
    """The control plane could not be started (the message carries the processes' log tails)."""


def repo_root() -> Path:
    """The source checkout this package lives in (operator/batchcompute_testbed/controlplane)."""
    return Path(__file__).resolve().parents[3]


def cache_dir() -> Path:
    """Where hack/install-controlplane.sh caches its build (same rules as the script)."""
    if os.environ.get("BCO_CACHE_DIR"):
        return Path(os.environ["BCO_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "batchcompute-operator"


@functools.cache
def find_kube_apiserver() -> Path:
    """The kube-apiserver binary: `$BCO_KUBE_APISERVER`, else whatever the install script prints.

    The script builds the binary on first use; concurrent callers on one machine take turns
    through a lock file so that only one of them builds.
    """
    override = os.environ.get("BCO_KUBE_APISERVER")
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ControlPlaneError(f"BCO_KUBE_APISERVER={override} is not an executable file")
        return path
    script = repo_root() / "hack" / "install-controlplane.sh"
    if not script.is_file():
        raise ControlPlaneError(
            f"{script} not found; set BCO_KUBE_APISERVER to a kube-apiserver binary"
        )
    lock_dir = cache_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(
            ["bash", str(script)], stdout=subprocess.PIPE, text=True, check=False
        )
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        raise ControlPlaneError(f"{script} failed with exit code {result.returncode}")
    path = Path(lines[-1])
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ControlPlaneError(f"{script} printed {path}, which is not an executable file")
    return path


def find_etcd() -> Path:
    """The etcd binary: `$BCO_ETCD`, else `etcd` on PATH."""
    found = os.environ.get("BCO_ETCD") or shutil.which("etcd")
    if not found:
        raise ControlPlaneError("etcd not found; run hack/install-controlplane.sh or set BCO_ETCD")
    return Path(found)


@dataclass(frozen=True)
class User:
    """An identity the API server authenticates, with a kubeconfig file of its own."""

    name: str
    groups: tuple[str, ...]
    kubeconfig: Path
    token: str | None = None
    client_cert: ClientCertificate | None = None


def kubeconfig_document(
    *,
    server: str,
    ca_pem: bytes | None,
    user: str,
    token: str | None = None,
    client_cert: ClientCertificate | None = None,
) -> dict[str, Any]:
    """A kubeconfig with one cluster, one user and one context, credentials embedded."""
    cluster: dict[str, Any] = {"server": server}
    if ca_pem is None:
        cluster["insecure-skip-tls-verify"] = True
    else:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    credentials: dict[str, Any] = {}
    if token is not None:
        credentials["token"] = token
    if client_cert is not None:
        credentials["client-certificate-data"] = base64.b64encode(
            client_cert.cert_file.read_bytes()
        ).decode()
        credentials["client-key-data"] = base64.b64encode(
            client_cert.key_file.read_bytes()
        ).decode()
    context = f"testbed-{user}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": cluster}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": context, "context": {"cluster": "testbed", "user": user}}],
        "current-context": context,
    }


def token_file_lines(users: Mapping[str, tuple[str, tuple[str, ...]]]) -> list[str]:
    """Rows of kube-apiserver's `--token-auth-file`: token,user,uid,"group1,group2"."""
    rows = []
    for name, (token, groups) in users.items():
        if any(c in name for c in ',"\n') or any(c in g for g in groups for c in ',"\n'):
            raise ValueError(f"user {name!r} or its groups contain a comma, quote or newline")
        rows.append(f'{token},{name},{name},"{",".join(groups)}"')
    return rows


def _safe_stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.touch(mode=mode)
    tmp.write_text(text)
    tmp.replace(path)


class ControlPlane:
    """etcd and kube-apiserver on random loopback ports, in a run directory of their own.

    Use as a context manager, or call `start()` and `stop()`. After `start()`:

    * `server` is the API server URL and `ca_file` its serving certificate bundle;
    * `admin` (group system:masters) and `operator` (the operator's ServiceAccount identity,
      authorised only by RBAC that is actually bound) are `User`s with `kubeconfig` files,
      also reachable as `kubeconfig_admin` / `kubeconfig_operator`;
    * `users` maps every user name to its `User`; `add_user()` adds more (token-based before
      start, client-certificate based after);
    * `audit_log_path` is the JSON-lines audit log when `audit_log=True`.
    """

    def __init__(
        self,
        *,
        apiserver: str | Path | None = None,
        etcd: str | Path | None = None,
        run_dir: str | Path | None = None,
        audit_log: bool = False,
        users: Mapping[str, Sequence[str]] | None = None,
        startup_timeout: float = 90.0,
        stop_grace: float = 10.0,
        keep_run_dir: bool = False,
        extra_apiserver_args: Sequence[str] = (),
        port_attempts: int = 4,
        die_with_parent: bool = True,
    ) -> None:
        self._apiserver_binary = Path(apiserver) if apiserver else None
        self._etcd_binary = Path(etcd) if etcd else None
        self._requested_run_dir = Path(run_dir) if run_dir else None
        self.audit_enabled = audit_log
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.keep_run_dir = keep_run_dir
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.port_attempts = port_attempts
        self.die_with_parent = die_with_parent

        self._token_users: dict[str, tuple[str, tuple[str, ...]]] = {
            ADMIN_USERNAME: (secrets.token_urlsafe(32), ADMIN_GROUPS),
            OPERATOR_USERNAME: (secrets.token_urlsafe(32), OPERATOR_GROUPS),
        }
        for name, groups in (users or {}).items():
            self._declare_token_user(name, groups)

        self.run_dir: Path | None = None
        self._owns_run_dir = False
        self.etcd_url: str | None = None
        self.server: str | None = None
        self.ca_file: Path | None = None
        self.audit_log_path: Path | None = None
        self.users: dict[str, User] = {}
        self.startup_seconds: float | None = None
        self._etcd: ManagedProcess | None = None
        self._apiserver: ManagedProcess | None = None
        self._client_ca: ClientCA | None = None
        self._failed = False
        self._atexit_registered = False

    # -- identities ---------------------------------------------------------------------

    def _declare_token_user(self, name: str, groups: Sequence[str]) -> None:
        if name in self._token_users:
            raise ValueError(f"user {name!r} already exists")
        all_groups = tuple(dict.fromkeys([*groups, "system:authenticated"]))
        self._token_users[name] = (secrets.token_urlsafe(32), all_groups)

    def add_user(self, name: str, groups: Sequence[str] = ()) -> User | None:
        """Add an identity; `system:authenticated` is always among its groups.

        Before `start()` the user gets a bearer token (returns None; see `users` afterwards).
        After `start()` it gets a client certificate from the control plane's client CA and
        the new `User` is returned at once.
        """
        if not self.started:
            self._declare_token_user(name, groups)
            return None
        if name in self.users:
            raise ValueError(f"user {name!r} already exists")
        assert self._client_ca is not None
        all_groups = tuple(dict.fromkeys([*groups, "system:authenticated"]))
        cert = self._client_ca.issue(name, all_groups, f"user-{_safe_stem(name)}")
        user = self._write_user(name, all_groups, client_cert=cert)
        self.users[name] = user
        return user

    @property
    def started(self) -> bool:
        return self.server is not None

    @property
    def admin(self) -> User:
        return self._user(ADMIN_USERNAME)

    @property
    def operator(self) -> User:
        return self._user(OPERATOR_USERNAME)

    @property
    def kubeconfig_admin(self) -> Path:
        return self.admin.kubeconfig

    @property
    def kubeconfig_operator(self) -> Path:
        return self.operator.kubeconfig

    def _user(self, name: str) -> User:
        try:
            return self.users[name]
        except KeyError:
            raise ControlPlaneError("the control plane has not been started") from None

    def _write_user(
        self,
        name: str,
        groups: tuple[str, ...],
        *,
        token: str | None = None,
        client_cert: ClientCertificate | None = None,
    ) -> User:
        assert self.run_dir is not None
        assert self.server is not None
        assert self.ca_file is not None
        doc = kubeconfig_document(
            server=self.server,
            ca_pem=self.ca_file.read_bytes(),
            user=name,
            token=token,
            client_cert=client_cert,
        )
        stem = _KUBECONFIG_STEMS.get(name) or f"user-{_safe_stem(name)}"
        path = self.run_dir / "kubeconfigs" / f"{stem}.kubeconfig"
        path.parent.mkdir(exist_ok=True)
        # JSON is YAML: every kubeconfig reader accepts it.
        _write_atomic(path, json.dumps(doc, indent=2) + "\n")
        return User(name, groups, path, token=token, client_cert=client_cert)

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        if self.started or self._etcd is not None:
            raise ControlPlaneError("the control plane is already started")
        apiserver = self._apiserver_binary or find_kube_apiserver()
        etcd = self._etcd_binary or find_etcd()
        began = time.monotonic()
        if self._requested_run_dir is not None:
            self.run_dir = self._requested_run_dir
            self.run_dir.mkdir(parents=True, exist_ok=True)
        else:
            self.run_dir = Path(tempfile.mkdtemp(prefix="bco-controlplane-"))
            self._owns_run_dir = True
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            deadline = began + self.startup_timeout
            self._prepare_files()
            self._start_etcd(etcd, deadline)
            self._start_apiserver(apiserver, deadline)
            for name, (token, groups) in self._token_users.items():
                self.users[name] = self._write_user(name, groups, token=token)
        except BaseException:
            self._failed = True
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _prepare_files(self) -> None:
        run = self.run_dir
        assert run is not None
        self._sa_key, self._sa_pub = write_service_account_keys(run)
        self._token_file = run / "tokens.csv"
        _write_atomic(self._token_file, "\n".join(token_file_lines(self._token_users)) + "\n")
        self._client_ca = ClientCA(run)
        self._cert_dir = run / "apiserver-certs"
        self._cert_dir.mkdir(exist_ok=True)
        if self.audit_enabled:
            self._audit_policy = run / "audit-policy.yaml"
            self._audit_policy.write_text(AUDIT_POLICY)
            self.audit_log_path = run / "audit.log"

    def _start_etcd(self, binary: Path, deadline: float) -> None:
        assert self.run_dir is not None
        for attempt in range(1, self.port_attempts + 1):
            client_port, peer_port = free_ports(2)
            data_dir = self.run_dir / "etcd-data"
            shutil.rmtree(data_dir, ignore_errors=True)
            client = f"http://{HOST}:{client_port}"
            peer = f"http://{HOST}:{peer_port}"
            argv = [
                str(binary),
                "--name=default",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--initial-cluster-state=new",
                f"--initial-cluster-token=bco-{secrets.token_hex(4)}",
                "--quota-backend-bytes=2147483648",
                "--snapshot-count=10000",
                "--auto-compaction-retention=1",
                "--logger=zap",
                "--log-outputs=stderr",
                "--log-level=warn",
            ]
            proc = ManagedProcess(
                "etcd",
                argv,
                self.run_dir / "etcd.log",
                die_with_parent=self.die_with_parent,
            )
            self._etcd = proc
            proc.start()
            if self._wait(proc, functools.partial(_etcd_healthy, client), deadline):
                self.etcd_url = client
                return
            proc.stop(self.stop_grace)
            if not (proc.address_in_use() and attempt < self.port_attempts):
                raise ControlPlaneError(self._failure("etcd did not become healthy"))

    def _apiserver_argv(self, binary: Path, port: int) -> list[str]:
        assert self.etcd_url is not None
        argv = [
            str(binary),
            f"--etcd-servers={self.etcd_url}",
            f"--secure-port={port}",
            f"--bind-address={HOST}",
            f"--advertise-address={HOST}",
            f"--cert-dir={self._cert_dir}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={self._sa_pub}",
            f"--service-account-signing-key-file={self._sa_key}",
            f"--token-auth-file={self._token_file}",
            f"--client-ca-file={self._client_ca.cert_file if self._client_ca else ''}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--disable-admission-plugins=ServiceAccount",
            "--profiling=false",
        ]
        if self.audit_enabled:
            argv += [
                f"--audit-policy-file={self._audit_policy}",
                f"--audit-log-path={self.audit_log_path}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
                "--audit-log-maxsize=0",
            ]
        return argv + self.extra_apiserver_args

    def _start_apiserver(self, binary: Path, deadline: float) -> None:
        assert self.run_dir is not None
        admin_token = self._token_users[ADMIN_USERNAME][0]
        for attempt in range(1, self.port_attempts + 1):
            (port,) = free_ports(1)
            proc = ManagedProcess(
                "kube-apiserver",
                self._apiserver_argv(binary, port),
                self.run_dir / "kube-apiserver.log",
                die_with_parent=self.die_with_parent,
            )
            self._apiserver = proc
            proc.start()
            server = f"https://{HOST}:{port}"
            probe = _ReadyProbe(server, self._cert_dir / "apiserver.crt", admin_token)
            if self._wait(proc, probe, deadline):
                self.server = server
                self.ca_file = probe.ca_file
                return
            proc.stop(self.stop_grace)
            if not (proc.address_in_use() and attempt < self.port_attempts):
                detail = f" (last probe: {probe.last_error})" if probe.last_error else ""
                raise ControlPlaneError(
                    self._failure(f"kube-apiserver did not become ready{detail}")
                )

    def restart_apiserver(self) -> float:
        """Stop kube-apiserver and start it again on the same port; returns the downtime.

        etcd keeps every object, but every client connection and watch breaks, and the new
        server's watch cache starts afresh, so clients resuming old watches get 410 Gone.
        """
        if self._apiserver is None or self.server is None or self.run_dir is None:
            raise ControlPlaneError("the control plane is not running")
        began = time.monotonic()
        port = int(self.server.rsplit(":", 1)[1])
        self._apiserver.stop(self.stop_grace)
        binary = self._apiserver_binary or find_kube_apiserver()
        proc = ManagedProcess("kube-apiserver", self._apiserver_argv(binary, port),
                              self.run_dir / "kube-apiserver.log",
                              die_with_parent=self.die_with_parent)
        self._apiserver = proc
        proc.start()
        admin_token = self._token_users[ADMIN_USERNAME][0]
        probe = _ReadyProbe(self.server, self._cert_dir / "apiserver.crt", admin_token)
        if not self._wait(proc, probe, time.monotonic() + self.startup_timeout):
            raise ControlPlaneError(self._failure("kube-apiserver did not come back"))
        return time.monotonic() - began

    @staticmethod
    def _wait(proc: ManagedProcess, ready: Callable[[], bool], deadline: float) -> bool:
        """Poll `ready()` until it is true (True), or the process exits / time runs out (False)."""
        interval = 0.05
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if ready():
                return True
            time.sleep(interval)
            interval = min(interval * 1.5, 0.25)
        return False

    def _failure(self, headline: str) -> str:
        parts = [f"{headline}; run directory {self.run_dir} kept"]
        parts += [p.describe() for p in (self._etcd, self._apiserver) if p is not None]
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop kube-apiserver, then etcd; idempotent. Removes a temporary run directory."""
        for proc in (self._apiserver, self._etcd):
            if proc is not None:
                proc.stop(self.stop_grace)
        self._apiserver = self._etcd = None
        self.server = None
        self.users = {}
        run = self.run_dir
        if run is None:
            return
        if self._owns_run_dir and not self.keep_run_dir and not self._failed:
            shutil.rmtree(run, ignore_errors=True)
        else:
            shutil.rmtree(run / "etcd-data", ignore_errors=True)
        self.run_dir = None

    def check_alive(self) -> None:
        """Raise ControlPlaneError (with log tails) if either process has exited."""
        for proc in (self._etcd, self._apiserver):
            if proc is None or not proc.running():
                raise ControlPlaneError(self._failure("a control-plane process has exited"))

    @property
    def pids(self) -> dict[str, int | None]:
        return {
            "etcd": self._etcd.pid if self._etcd else None,
            "kube-apiserver": self._apiserver.pid if self._apiserver else None,
        }

    def env(self) -> dict[str, Any]:
        """What other programs need to use this control plane (written as env.json)."""
        if not self.started:
            raise ControlPlaneError("the control plane has not been started")
        return {
            "server": self.server,
            "ca_file": str(self.ca_file),
            "kubeconfig_admin": str(self.kubeconfig_admin),
            "kubeconfig_operator": str(self.kubeconfig_operator),
            "admin_user": ADMIN_USERNAME,
            "admin_token": self.admin.token,
            "operator_user": OPERATOR_USERNAME,
            "operator_token": self.operator.token,
            "users": {
                u.name: {"kubeconfig": str(u.kubeconfig), "groups": list(u.groups)}
                for u in self.users.values()
            },
            "etcd_url": self.etcd_url,
            "audit_log": str(self.audit_log_path) if self.audit_log_path else None,
            "run_dir": str(self.run_dir),
            "pids": self.pids,
            "pid": os.getpid(),
            "startup_seconds": self.startup_seconds,
        }


def _etcd_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:  # noqa: S310
            body = json.loads(resp.read() or b"{}")
    except (OSError, ValueError):
        return False
    return str(body.get("health")) == "true"


class _ReadyProbe:
    """GET /readyz with the admin token, verifying the server's self-signed certificate."""

    def __init__(self, server: str, ca_file: Path, token: str) -> None:
        self.server = server
        self.ca_file = ca_file
        self.token = token
        self.last_error: str | None = None
        self._context: ssl.SSLContext | None = None

    def __call__(self) -> bool:
        if self._context is None:
            if not self.ca_file.is_file():
                return False
            # The file appears before the key is written; retry until it loads.
            try:
                self._context = ssl.create_default_context(cafile=str(self.ca_file))
            except (ssl.SSLError, OSError) as exc:
                self.last_error = str(exc)
                return False
        request = urllib.request.Request(  # noqa: S310
            f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=2, context=self._context) as resp:  # noqa: S310
                ok = bool(resp.status == 200)
        except urllib.error.HTTPError as exc:
            self.last_error = f"HTTP {exc.code}: {exc.read(500).decode('utf-8', 'replace')}"
            return False
        except (OSError, ValueError) as exc:
            self.last_error = str(exc)
            return False
        return ok


@contextlib.contextmanager
def running(**options: Any) -> Iterator[ControlPlane]:
    """`with running(audit_log=True) as cp:` — start, yield, stop."""
    plane = ControlPlane(**options)
    with plane:
        yield plane
