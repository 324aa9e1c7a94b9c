"""`make e2e` scenarios: the operator under test is the Deployment on kind, nothing else.

hack/e2e.sh deploys IMAGE through deploy/overlays/e2e-kind (the ARM emulator in the pod),
port-forwards the emulator's port and the metrics port, and runs this module with:

    BCO_KUBECONFIG        the kind cluster's kubeconfig
    BCO_E2E_IMAGE         the operator image that must be running
    BCO_E2E_ARM_URL       the emulator (ARM and its admin API), port-forwarded
    BCO_E2E_CA_FILE       the emulator's CA, copied out of the pod
    BCO_E2E_METRICS_URL   the operator's /metrics, port-forwarded

Each scenario works in a namespace of its own (the operator serves the whole cluster) and
seeds a workspace of its own in the emulator. The user's side is the same as in
tests/integration (operator_proc.Attachments and Workspace); only the operator differs.
"""

from __future__ import annotations

import os
import secrets
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes
import pytest
from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "integration"))

from operator_proc import Attachments, Workspace  # noqa: E402
from waiting import wait_for  # noqa: E402

OPERATOR_NAMESPACE = "batchcompute-system"
DEPLOYMENT = "batchcompute-operator"
TIMEOUT = 120.0


def setting(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.skip(f"{name} is not set: run through `make e2e` (hack/e2e.sh run)")
    return value


class Emulator:
    """The in-cluster emulator's admin API, through the port-forward."""

    def __init__(self, url: str, ca_file: str) -> None:
        self.arm_url = url
        tls = ssl.create_default_context(cafile=ca_file)
        self.client = httpx.Client(base_url=url, verify=tls, timeout=10.0)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        assert not response.is_error, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else None

    def seed(self, data: dict[str, Any]) -> Any:
        return self.call("POST", "/_admin/seed", json=data)

    def computes(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.call("GET", "/_admin/computes")
        return result

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.call(
            "GET", "/_admin/requests", params={"since": since}
        )
        return result

    def remove_compute(self, ws: Workspace, name: str) -> None:
        path = f"/_admin/computes/{ws.subscription}/{ws.resource_group}/{ws.name}/{name}"
        self.call("DELETE", path)

    def close(self) -> None:
        self.client.close()


@pytest.fixture(scope="session")
def kube() -> Iterator[ApiClient]:
    api = kubernetes.config.new_client_from_config(config_file=setting("BCO_KUBECONFIG"))
    yield api
    api.close()


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    emu = Emulator(setting("BCO_E2E_ARM_URL"), setting("BCO_E2E_CA_FILE"))
    yield emu
    emu.close()


@pytest.fixture
def namespace(kube: ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    core = CoreV1Api(kube)
    name = f"e2e-{request.node.name[5:30].replace('_', '-').strip('-')}-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def attachments(kube: ApiClient, namespace: str) -> Attachments:
    return Attachments(kube, namespace)


@pytest.fixture
def workspace(emulator: Emulator) -> Workspace:
    return Workspace.fresh(emulator)


def test_the_deployment_runs_the_image_under_test(kube: ApiClient) -> None:
    """Every replica runs IMAGE, is Ready (readiness = the watch is established and ARM
    answered) and has not restarted; no workload identity is asked for on kind."""
    image = setting("BCO_E2E_IMAGE")
    deployment = AppsV1Api(kube).read_namespaced_deployment(DEPLOYMENT, OPERATOR_NAMESPACE)
    (manager,) = [c for c in deployment.spec.template.spec.containers if c.name == "manager"]
    assert manager.image == image
    assert "azure.workload.identity/use" not in (deployment.spec.template.metadata.labels or {})
    assert deployment.status.ready_replicas == deployment.spec.replicas
    selector = ",".join(f"{k}={v}" for k, v in deployment.spec.selector.match_labels.items())
    pods = CoreV1Api(kube).list_namespaced_pod(OPERATOR_NAMESPACE, label_selector=selector).items
    assert pods
    for pod in pods:
        statuses = {s.name: s for s in pod.status.container_statuses}
        assert statuses["manager"].ready, pod.metadata.name
        assert statuses["manager"].restart_count == 0, f"{pod.metadata.name} restarted"


def test_attach_then_detach(
    attachments: Attachments, workspace: Workspace, emulator: Emulator
) -> None:
    attachments.create("batch", workspace.spec())
    attachments.wait_condition("batch", "True", reason="Attached", timeout=TIMEOUT)
    compute = workspace.computes(emulator)["batch"]
    assert compute["properties"]["computeType"] == "Batch"
    assert compute["properties"]["resourceId"].lower() == workspace.account_id().lower()

    attachments.delete("batch")
    attachments.wait_gone("batch", timeout=TIMEOUT)
    assert "batch" not in workspace.computes(emulator)


def test_drift_is_repaired(
    attachments: Attachments, workspace: Workspace, emulator: Emulator
) -> None:
    """A compute removed behind the operator's back is attached again at the next resync."""
    attachments.create("drifting", workspace.spec())
    attachments.wait_condition("drifting", "True", timeout=TIMEOUT)
    emulator.remove_compute(workspace, "drifting")
    wait_for(
        lambda: "Drifted" in attachments.reasons("drifting"),
        timeout=TIMEOUT,
        message="Drifted event",
    )
    attachments.wait_condition("drifting", "True", timeout=TIMEOUT)
    assert "drifting" in workspace.computes(emulator)
    attachments.delete("drifting")
    attachments.wait_gone("drifting", timeout=TIMEOUT)


def test_a_missing_batch_account_fails_the_attach(
    attachments: Attachments, workspace: Workspace
) -> None:
    spec = workspace.spec()
    spec["batchAccount"] = {"resourceGroup": workspace.batch_resource_group,
                            "accountName": "nosuchaccount"}  # fmt: skip
    attachments.create("missing", spec)
    obj = attachments.wait_condition("missing", "False", reason="ResourceNotFound",
                                     timeout=TIMEOUT)
    assert obj["status"]["provisioningState"] == "Failed"
    assert obj["status"]["provisioningErrors"][0]["code"] == "ResourceNotFound"
    attachments.delete("missing")
    attachments.wait_gone("missing", timeout=TIMEOUT)


def test_metrics_are_served() -> None:
    response = httpx.get(setting("BCO_E2E_METRICS_URL"), timeout=10.0)
    assert response.status_code == 200
    assert "# TYPE " in response.text
