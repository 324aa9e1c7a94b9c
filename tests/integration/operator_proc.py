"""The operator under test: a real `python -m batchcompute_operator` process, and helpers to
drive BatchComputeAttachment resources the way a user would (create, read status, delete)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException
from waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "batchcompute.azureml.dev", "v1alpha1", "batchcomputeattachments"
SUBSCRIPTION = "00000000-0000-0000-0000-0000000000a1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class OperatorProcess:
    """One operator process watching the given namespaces, as the operator's ServiceAccount."""

    kubeconfig: Path
    emulator: Any
    namespaces: tuple[str, ...]
    log_file: Path
    env_overrides: Mapping[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    health_port: int = 0
    metrics_port: int = 0
    verbose: bool = True  # --verbose (DEBUG); False: the level BCO_LOG_LEVEL sets, INFO by default

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BCO_", "AZURE_"))}
        env.update({
            "PYTHONPATH": str(REPO_ROOT / "operator"),
            "KUBECONFIG": str(self.kubeconfig),
            "BCO_ARM_ENDPOINT": self.emulator.arm_url,
            "BCO_ARM_AUDIENCE": "https://management.azure.com",
            "BCO_CA_BUNDLE": self.emulator.ca_file,
            # The real azure-identity managed-identity flow, served by the emulator.
            "BCO_CREDENTIAL": "managed-identity",
            "IDENTITY_ENDPOINT": self.emulator.identity_endpoint,
            "IDENTITY_HEADER": self.emulator.identity_header,
            "BCO_NAMESPACES": ",".join(self.namespaces),
            "BCO_POLL_INTERVAL": "0.5",
            "BCO_RESYNC_INTERVAL": "3",
            "BCO_RETRY_MIN": "0.5",
            "BCO_RETRY_MAX": "5",
            "BCO_FAILURE_RETRY_MIN": "1",
            "BCO_FAILURE_RETRY_MAX": "5",
            "BCO_DETACH_WAIT": "20",
            "BCO_HEALTH_PORT": str(self.health_port),
            "BCO_METRICS_PORT": str(self.metrics_port),
        })
        env.update(self.env_overrides)
        return env

    def start(self) -> OperatorProcess:
        self.health_port = self.health_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "batchcompute_operator",
             *(["--verbose"] if self.verbose else [])],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=self.env(), cwd=REPO_ROOT,
        )
        log.close()
        wait_for(self._healthy, timeout=30, message="operator liveness endpoint")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited {self.proc.returncode}:\n{self.log()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.health_port), timeout=0.5):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye; what a node failure or OOM kill does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """The operator's /metrics, parsed by prometheus-client: sample name -> samples."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        found: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
        return found

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        return sum(value for have, value in self.metrics().get(name, [])
                   if all(have.get(k) == v for k, v in labels.items()))

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


@contextlib.contextmanager
def temporary_namespace(kube: ApiClient, name: str,
                        labels: Mapping[str, str] | None = None) -> Iterator[str]:
    """A namespace for the block; its deletion is requested (not awaited) at the end."""
    core = CoreV1Api(kube)
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = dict(labels)
    core.create_namespace({"metadata": meta})
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise


def failed(request: Any) -> bool:
    """Whether the test's call phase failed (conftest's report hook keeps it on the node)."""
    report = getattr(request.node, "rep_call", None)
    return report is not None and bool(report.failed)


class Operators:
    """The operator processes one test starts: stopped at its end, logs printed if it failed."""

    def __init__(self, kubeconfig: Path, emulator: Any, log_dir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.emulator = emulator
        self.log_dir = log_dir
        self.started: list[OperatorProcess] = []

    def start(self, namespaces: Sequence[str], *, verbose: bool = True,
              **env: str) -> OperatorProcess:
        proc = OperatorProcess(self.kubeconfig, self.emulator, tuple(namespaces),
                               self.log_dir / f"operator-{len(self.started)}.log",
                               env_overrides=env, verbose=verbose)
        self.started.append(proc)
        return proc.start()

    def finish(self, failed: bool) -> None:
        for proc in self.started:
            proc.stop()
        if failed:
            for proc in self.started:
                print(f"---- {proc.log_file.name} ----\n{proc.log()[-20000:]}")


class Attachments:
    """BatchComputeAttachment resources in one namespace, through the admin's API client."""

    def __init__(self, api: ApiClient, namespace: str) -> None:
        self.custom = CustomObjectsApi(api)
        self.core = CoreV1Api(api)
        self.namespace = namespace

    def create(self, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "BatchComputeAttachment",
                "metadata": {"name": name, "namespace": self.namespace}, "spec": dict(spec)}
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body)
        return result

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def patch_spec(self, name: str, spec: Mapping[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name,
                                                   {"spec": dict(spec)})

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def condition(self, name: str, type_: str = "Ready") -> dict[str, Any]:
        obj = self.get(name) or {}
        for cond in obj.get("status", {}).get("conditions", []):
            if cond.get("type") == type_:
                return dict(cond)
        return {}

    def wait_condition(self, name: str, status: str = "True", type_: str = "Ready",
                       reason: str | None = None, timeout: float = 30) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            obj = self.get(name) or {}
            gen = obj.get("metadata", {}).get("generation")
            cond = self.condition(name, type_)
            if cond.get("status") == status and cond.get("observedGeneration") == gen and \
                    (reason is None or cond.get("reason") == reason):
                return obj
            return None
        return wait_for(check, timeout=timeout,
                        message=f"{name}: {type_}={status} reason={reason}")

    def wait_gone(self, name: str, timeout: float = 30) -> None:
        wait_for(lambda: self.get(name) is None, timeout=timeout, message=f"{name} deleted")

    def events(self, name: str) -> list[tuple[str, str, str]]:
        items = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}").items
        ordered = sorted(items, key=lambda e: (e.first_timestamp or e.event_time or 0,
                                               e.metadata.name))
        return [(e.type, e.reason, e.message) for e in ordered]

    def reasons(self, name: str) -> list[str]:
        return [reason for _, reason, _ in self.events(name)]


@dataclass
class Workspace:
    """A workspace and a Batch account of the test's own, seeded in the shared emulator."""

    subscription: str
    resource_group: str
    name: str
    batch_resource_group: str
    account: str

    @classmethod
    def fresh(cls, emulator: Any, location: str = "westeurope") -> Workspace:
        tag = uuid.uuid4().hex[:10]
        ws = cls(SUBSCRIPTION, f"ml-rg-{tag}", f"ws-{tag}", f"batch-rg-{tag}", f"acct{tag}")
        emulator.seed({
            "workspaces": [{"subscriptionId": ws.subscription, "resourceGroup": ws.resource_group,
                            "name": ws.name, "location": location}],
            "batchAccounts": [{"subscriptionId": ws.subscription,
                               "resourceGroup": ws.batch_resource_group, "name": ws.account,
                               "location": "northeurope"}],
        })
        return ws

    def spec(self, **extra: Any) -> dict[str, Any]:
        """A BatchComputeAttachment spec for this workspace and its Batch account."""
        return {"workspace": self.ref,
                "batchAccount": {"resourceGroup": self.batch_resource_group,
                                 "accountName": self.account},
                **extra}

    @property
    def ref(self) -> dict[str, str]:
        return {"subscriptionId": self.subscription, "resourceGroup": self.resource_group,
                "name": self.name}

    def account_id(self, account: str | None = None) -> str:
        return (f"/subscriptions/{self.subscription}/resourceGroups/{self.batch_resource_group}"
                f"/providers/Microsoft.Batch/batchAccounts/{account or self.account}")

    def compute_path(self, compute: str) -> str:
        return (f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
                f"/providers/Microsoft.MachineLearningServices/workspaces/{self.name}"
                f"/computes/{compute}")

    @staticmethod
    def calls(emulator: Any, since: int) -> list[dict[str, Any]]:
        """Workspace API requests (not token requests or the operator's token-less readiness
        probe) since `since`; tests run one at a time, each with its own operator, so
        everything after the test's first sequence number is its own."""
        return [r for r in emulator.requests(since) if not r["path"].startswith("/msi")
                and r["path"] != "/subscriptions"]  # the readiness probe, sent with no token

    def computes(self, emulator: Any) -> dict[str, dict[str, Any]]:
        """The computes the emulator holds in this workspace, by name, in ARM's JSON shape."""
        return {str(item["compute"]["name"]): item["compute"] for item in emulator.computes()
                if str(item.get("workspace", "")).lower() == self.name.lower()}
