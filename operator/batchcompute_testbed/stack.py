"""The local stack shared by `make demo` and `make bench`: emulator process, CRD + RBAC
install, and the operator started through its real entry point, as deployed."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
OPERATOR_NAMESPACE = "batchcompute-system"


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None, check: bool = True) -> str:
    result = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), *args], input=stdin,
                            capture_output=True, text=True, timeout=300, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def install(admin_kubeconfig: Path) -> None:
    """The CRD and the operator's RBAC exactly as deploy/ ships them.

    `--validate=false`: the test bed's v1.20 API server predates `x-kubernetes-validations`,
    so client-side validation against its OpenAPI would refuse the CRD; the server itself
    accepts it and ignores the CEL rules it cannot evaluate.
    """
    kubectl(admin_kubeconfig, "apply", "--validate=false", "-k", str(REPO_ROOT / "deploy/crd"))
    kubectl(admin_kubeconfig, "wait", "--for=condition=Established", "--timeout=60s",
            "crd/batchcomputeattachments.batchcompute.azureml.dev")
    namespace = kubectl(admin_kubeconfig, "create", "namespace", OPERATOR_NAMESPACE,
                        "--dry-run=client", "-o", "yaml")
    rbac = kubectl(admin_kubeconfig, "kustomize", str(REPO_ROOT / "deploy/rbac"))
    kubectl(admin_kubeconfig, "apply", "-f", "-", stdin=namespace + "\n---\n" + rbac)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(extra: Mapping[str, str] = {}) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BCO_", "AZURE_"))}
    env["PYTHONPATH"] = str(REPO_ROOT / "operator")
    env.update(extra)
    return env


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class EmulatorProcess:
    """The ARM emulator as a separate process (TLS, its own CA), seeded at start."""

    workdir: Path
    args: Sequence[str] = ()
    seed: Mapping[str, Any] | None = None
    proc: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _tls: ssl.SSLContext | None = field(default=None, init=False, repr=False)

    def start(self) -> EmulatorProcess:
        self._tls = None  # its CA is read again from what this start reports
        self.workdir.mkdir(parents=True, exist_ok=True)
        ready = self.workdir / "emulator.json"
        argv = [sys.executable, "-m", "batchcompute_testbed.emulator", "--port", "0",
                "--ready-file", str(ready), "--tls-dir", str(self.workdir / "tls"), *self.args]
        if self.seed is not None:
            seed_file = self.workdir / "seed.json"
            seed_file.write_text(json.dumps(self.seed))
            argv += ["--seed", str(seed_file)]
        with (self.workdir / "emulator.log").open("wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=child_env())
        proc = self.proc
        wait_until(lambda: ready.exists() or proc.poll() is not None, 30, "the emulator")
        if proc.poll() is not None:
            raise RuntimeError((self.workdir / "emulator.log").read_text())
        self.info = json.loads(ready.read_text())
        return self

    @property
    def arm_url(self) -> str:
        return str(self.info["arm_url"])

    def tls(self) -> ssl.SSLContext:
        """A client context that trusts the emulator's CA (and nothing else), made once."""
        if self._tls is None:
            self._tls = ssl.create_default_context(cafile=str(self.info["ca_file"]))
        return self._tls

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        with httpx.Client(verify=self.tls(), timeout=30) as http:
            resp = http.request(method, f"{self.arm_url}/_admin/{path}", **kwargs)
            resp.raise_for_status()
            return resp.json() if resp.content else None

    def operator_env(self) -> dict[str, str]:
        """How the operator reaches this emulator: its CA, and the managed-identity endpoint
        that azure-identity's ManagedIdentityCredential talks to."""
        return {
            "BCO_ARM_ENDPOINT": self.arm_url,
            "BCO_CA_BUNDLE": str(self.info["ca_file"]),
            "BCO_CREDENTIAL": "managed-identity",
            "IDENTITY_ENDPOINT": str(self.info["identity_endpoint"]),
            "IDENTITY_HEADER": str(self.info["identity_header"]),
        }

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_operator(kubeconfig: Path, env: Mapping[str, str], log_file: Path,
                   args: Sequence[str] = ("-m", "batchcompute_operator"),
                   ) -> subprocess.Popen[bytes]:
    """`python -m batchcompute_operator` (or `python *args`) with the given BCO_* settings;
    waits for liveness on BCO_HEALTH_PORT."""
    port = free_port()
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, *args], stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT,
            env=child_env({"KUBECONFIG": str(kubeconfig), "BCO_HEALTH_PORT": str(port),
                           "BCO_METRICS_PORT": str(free_port()), **env}))

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"operator exited:\n{log_file.read_text()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 60, "the operator's liveness endpoint", 0.2)
    return proc
