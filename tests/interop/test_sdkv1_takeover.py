"""SDK v1 and the running operator side by side, as a team moving off SDK v1 has them.

azureml-core 1.61 (unmodified, tests/interop/sdkv1_driver.py), the test bed's kube-apiserver
and the operator (`python -m batchcompute_operator`, as its ServiceAccount) all run in this
network namespace against one emulator. Each test is a step of README's "Moving off SDK v1":
take over what SDK v1 attached (export, review, apply as Orphan, adopted with one PUT, then
Detach), read the operator's attachments with SDK v1, repair an SDK v1 `detach()`, and watch
without writing (managementPolicy Observe).

The operator uses a token of its own principal (conftest.OPERATOR_PRINCIPAL) and SDK v1 the
managed-identity endpoint's, so the emulator's request log says who wrote what.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_proc import Attachments, OperatorProcess, Workspace
from waiting import wait_for

from batchcompute_testbed.stack import kubectl

from .conftest import OPERATOR_PRINCIPAL, REPO_ROOT, Cluster, Emulator
from .sdkv1 import SdkV1

OWNER_TAG = "batchcompute-operator.owner"
OWNER_UID_TAG = "batchcompute-operator.owner-uid"
RESYNC_INTERVAL = 3.0  # BCO_RESYNC_INTERVAL of tests/integration/operator_proc.py
OPERATION_SECONDS = 0.5
# A deadline for what must happen, not a measure of how fast: the machine may be busy. What is
# promised about timing (the drift repair) is asserted from the request log's clock.
WAIT = 30.0


@pytest.fixture(scope="module", autouse=True)
def operations_take_a_moment(emulator: Emulator) -> None:
    """Long enough for SDK v1 to print "InProgress" and for the operator to see `Creating`."""
    emulator.configure(operation_seconds=OPERATION_SECONDS)


@pytest.fixture
def workspace(emulator: Emulator) -> Workspace:
    """A workspace and a Batch account of the test's own (tests/integration/operator_proc.py)."""
    return Workspace.fresh(emulator)


@pytest.fixture
def sdk(sdkv1_python: Path, emulator: Emulator, workspace: Workspace, tmp_path: Path) -> SdkV1:
    """An SDK v1 user of the test's workspace."""
    return SdkV1(python=sdkv1_python, ready_file=emulator.ready_file, home=tmp_path / "home",
                 subscription=workspace.subscription, resource_group=workspace.resource_group,
                 workspace=workspace.name)


@pytest.fixture
def attachments(kube: Any, operator_namespace: str) -> Attachments:
    return Attachments(kube, operator_namespace)


def operator_writes(emulator: Emulator, workspace: Workspace, since: int = 0,
                    ) -> list[tuple[str, str]]:
    """(method, compute name) of every PUT and DELETE the operator sent to the workspace."""
    prefix = workspace.compute_path("").lower()
    return [(e["method"], e["path"].rsplit("/", 1)[-1]) for e in emulator.requests(since)
            if e["principal"] == OPERATOR_PRINCIPAL and e["method"] in ("PUT", "DELETE")
            and e["path"].lower().startswith(prefix)]


def export(emulator: Emulator, workspace: Workspace,
           *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl batchcompute export` (hack/kubectl-batchcompute on PATH) with the operator's
    settings, signed in through the managed-identity endpoint."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BCO_", "AZURE_"))}
    env.update(PATH=f"{REPO_ROOT / 'hack'}{os.pathsep}{env['PATH']}",
               KUBECTL_BATCHCOMPUTE_PYTHON=sys.executable,
               BCO_ARM_ENDPOINT=emulator.arm_url, BCO_CA_BUNDLE=emulator.ca_file,
               BCO_CREDENTIAL="managed-identity", IDENTITY_ENDPOINT=emulator.identity_endpoint,
               IDENTITY_HEADER=emulator.identity_header)
    return subprocess.run(
        ["kubectl", "batchcompute", "export", "--subscription", workspace.subscription,
         "--resource-group", workspace.resource_group, "--workspace", workspace.name, *args],
        env=env, capture_output=True, text=True, timeout=60, check=False)


def resyncs(emulator: Emulator, workspace: Workspace, since: int, count: int) -> None:
    """Wait until the operator has listed the workspace `count` more times."""
    def lists() -> bool:
        return len([e for e in emulator.requests(since) if e["principal"] == OPERATOR_PRINCIPAL
                    and e["target"] == "list" and workspace.name in e["path"]]) >= count

    wait_for(lists, timeout=WAIT,
             message=f"{count} resync LISTs of {workspace.name}")


def wait_event(attachments: Attachments, name: str, type_: str, reason: str,
               uid: str | None = None) -> str:
    """The message of the first such event about `name` (of that uid, when given); events are
    posted after the status write they belong to."""
    selector = f"involvedObject.name={name},type={type_},reason={reason}"
    if uid is not None:
        selector += f",involvedObject.uid={uid}"

    def found() -> str | None:
        items = attachments.core.list_namespaced_event(attachments.namespace,
                                                       field_selector=selector).items
        return items[0].message if items else None

    return wait_for(found, timeout=WAIT, message=f"a {type_} event {reason} for {name}")


def stayed_on_loopback(*results: dict[str, Any]) -> None:
    for result in results:
        assert result["outside_loopback"] == [], result["outside_loopback"]


def test_what_sdkv1_attached_is_exported_applied_and_adopted_with_one_put(
    emulator: Emulator, operator: OperatorProcess, installed: Cluster, workspace: Workspace,
    sdk: SdkV1, attachments: Attachments, tmp_path: Path,
) -> None:
    # Before: SDK v1 attached one account; someone gave another compute tags in the portal.
    attached = sdk.run("attach", "--name", "sdk-batch",
                       "--account-resource-group", workspace.batch_resource_group,
                       "--account-name", workspace.account)
    assert attached["provisioning_state"] == "Succeeded"
    emulator.admin("PUT", f"/computes/{workspace.subscription}/{workspace.resource_group}/"
                          f"{workspace.name}/Portal-Batch",
                   json={"tags": {"cost-center": "ml-42"},
                         "properties": {"computeType": "Batch",
                                        "resourceId": workspace.account_id(),
                                        "description": "attached in the portal"}})

    # export -> review -> apply as Orphan
    exported = export(emulator, workspace, "--namespace", attachments.namespace)
    assert exported.returncode == 0, exported.stderr
    assert exported.stderr == ""
    docs = {d["spec"]["computeName"]: d for d in yaml.safe_load_all(exported.stdout) if d}
    assert sorted(docs) == ["Portal-Batch", "sdk-batch"]
    assert {d["spec"]["deletionPolicy"] for d in docs.values()} == {"Orphan"}
    assert docs["sdk-batch"]["spec"]["batchAccount"] == {"resourceId": workspace.account_id()}
    assert docs["Portal-Batch"]["metadata"]["name"] == "portal-batch"
    assert docs["Portal-Batch"]["spec"]["tags"] == {"cost-center": "ml-42"}
    assert docs["Portal-Batch"]["spec"]["description"] == "attached in the portal"
    manifests = tmp_path / "attachments.yaml"
    manifests.write_text(exported.stdout)
    since = emulator.last_seq()
    kubectl(installed.kubeconfig, "apply", "-f", str(manifests))

    # adopted: Ready, an Adopting and an Attached event, one PUT each and nothing else
    for name in ("sdk-batch", "portal-batch"):
        attachments.wait_condition(name, reason="Attached", timeout=WAIT)
        wait_event(attachments, name, "Normal", "Attached")
        assert sorted(attachments.reasons(name)) == ["Adopting", "Attached"]
    assert sorted(operator_writes(emulator, workspace, since)) == \
        [("PUT", "Portal-Batch"), ("PUT", "sdk-batch")]
    [adoption] = [e["body"] for e in emulator.requests(since) if e["method"] == "PUT"
                  and e["path"].endswith("/Portal-Batch")]
    portal_uid = attachments.get("portal-batch")["metadata"]["uid"]  # type: ignore[index]
    assert adoption == {  # the same attachment, with the owner recorded and nothing lost
        "location": "westeurope",
        "tags": {"cost-center": "ml-42",
                 OWNER_TAG: f"{attachments.namespace}/portal-batch", OWNER_UID_TAG: portal_uid},
        "properties": {"computeType": "Batch", "resourceId": workspace.account_id(),
                       "description": "attached in the portal"}}

    # SDK v1 still sees its compute Succeeded, now with the owner tags
    status = sdk.run("status", "--name", "sdk-batch")
    assert status["status"] == "Succeeded"
    assert status["provisioning_state"] == "Succeeded"
    uid = attachments.get("sdk-batch")["metadata"]["uid"]  # type: ignore[index]
    assert status["serialized"]["tags"] == {OWNER_TAG: f"{attachments.namespace}/sdk-batch",
                                            OWNER_UID_TAG: uid}
    assert status["serialized"]["properties"]["resourceId"] == workspace.account_id()
    portal = workspace.computes(emulator)["Portal-Batch"]
    assert portal["tags"]["cost-center"] == "ml-42"  # the user's tags and description stay
    assert portal["properties"]["description"] == "attached in the portal"
    stayed_on_loopback(attached, status)

    # verified: switch to Detach. Ready for the new generation means the operator has decided
    # on it, and that changes nothing in Azure.
    since = emulator.last_seq()
    attachments.patch_spec("sdk-batch", {"deletionPolicy": "Detach"})
    attachments.wait_condition("sdk-batch", reason="Attached")
    assert operator_writes(emulator, workspace, since) == []


def test_an_operator_attached_compute_is_a_batchcompute_in_compute_targets(
    emulator: Emulator, operator: OperatorProcess, workspace: Workspace, sdk: SdkV1,
    attachments: Attachments,
) -> None:
    attachments.create("op-batch", workspace.spec(description="attached by the operator",
                                                  tags={"team": "vision"}))
    ready = attachments.wait_condition("op-batch", reason="Attached", timeout=WAIT)

    listed = sdk.run("list")
    target = listed["compute_targets"]["op-batch"]
    assert target["class"] == "BatchCompute"
    assert target["type"] == "Batch"
    assert target["provisioning_state"] == "Succeeded"
    assert target["cluster_resource_id"] == workspace.account_id()
    assert target["tags"] == {"team": "vision",
                              OWNER_TAG: f"{attachments.namespace}/op-batch",
                              OWNER_UID_TAG: ready["metadata"]["uid"]}
    stayed_on_loopback(listed)


def test_an_sdkv1_detach_of_an_owned_compute_is_repaired_with_a_drifted_event(
    emulator: Emulator, operator: OperatorProcess, workspace: Workspace, sdk: SdkV1,
    attachments: Attachments,
) -> None:
    attachments.create("owned-batch", workspace.spec())
    attachments.wait_condition("owned-batch", reason="Attached", timeout=WAIT)
    since = emulator.last_seq()

    detached = sdk.run("detach", "--name", "owned-batch")
    assert 'operation "Succeeded"' in detached["printed"]

    def drifted() -> list[str]:
        return [m for t, r, m in attachments.events("owned-batch")
                if (t, r) == ("Warning", "Drifted")]

    [message] = wait_for(drifted, timeout=WAIT, message="a Drifted event")
    assert message == (
        f"compute 'owned-batch' was detached from workspace {workspace.name!r} outside the "
        "operator (for example by SDK v1 BatchCompute.detach() or the portal); re-attaching "
        f"{workspace.account_id()}")
    attachments.wait_condition("owned-batch", reason="Attached", timeout=WAIT)
    assert operator_writes(emulator, workspace, since) == [("PUT", "owned-batch")]

    # The re-attach follows the first LIST that no longer shows the compute (the detach
    # operation ends OPERATION_SECONDS after SDK v1's DELETE) within one resync interval.
    log = emulator.requests(since)
    gone_at = next(e["time"] for e in log if e["method"] == "DELETE") + OPERATION_SECONDS
    put = next(e for e in log if e["principal"] == OPERATOR_PRINCIPAL and e["method"] == "PUT")
    lists = [e["time"] for e in log if e["principal"] == OPERATOR_PRINCIPAL
             and e["target"] == "list" and workspace.name in e["path"]
             and e["time"] <= put["time"]]
    showing = [t for t in lists if t >= gone_at] or lists[-1:]
    assert showing, "the PUT came from no LIST"
    assert put["time"] - showing[0] <= RESYNC_INTERVAL, (put["time"] - gone_at, lists)

    back = workspace.computes(emulator)["owned-batch"]
    assert back["properties"]["provisioningState"] == "Succeeded"
    assert back["tags"][OWNER_TAG] == f"{attachments.namespace}/owned-batch"
    stayed_on_loopback(detached)


def test_observe_makes_no_arm_write_through_attach_drift_and_delete(
    emulator: Emulator, operator: OperatorProcess, workspace: Workspace, sdk: SdkV1,
    attachments: Attachments,
) -> None:
    spec = workspace.spec(managementPolicy="Observe", deletionPolicy="Detach")
    since = emulator.last_seq()

    # attach: declared but not attached in Azure -> reported, never attached
    attachments.create("watched", spec)
    attachments.wait_condition("watched", type_="Stalled", reason="NotAttached")
    attached = sdk.run("attach", "--name", "watched", "--resource-id", workspace.account_id())
    ready = attachments.wait_condition("watched", reason="Attached", timeout=WAIT)
    assert ready["status"]["provisioningState"] == "Succeeded"
    assert ready["status"]["clusterResourceId"] == workspace.account_id()

    # delete while attached: the operator lets the resource go, the compute stays as SDK v1
    # left it
    attachments.delete("watched")
    attachments.wait_gone("watched", timeout=WAIT)
    assert "is left as it is" in wait_event(attachments, "watched", "Normal", "LeftInPlace")
    computes = workspace.computes(emulator)
    assert computes["watched"]["properties"]["provisioningState"] == "Succeeded"
    assert not computes["watched"].get("tags")  # no owner tags: never adopted

    # drift: SDK v1 detaches a watched compute -> reported, never re-attached
    uid = attachments.create("watched", spec)["metadata"]["uid"]
    attachments.wait_condition("watched", reason="Attached", timeout=WAIT)
    detached = sdk.run("detach", "--name", "watched")
    attachments.wait_condition("watched", type_="Stalled", reason="NotAttached",
                               timeout=WAIT)
    resyncs(emulator, workspace, emulator.last_seq(), 1)  # one more look: still no repair
    assert "watched" not in workspace.computes(emulator)
    wait_event(attachments, "watched", "Warning", "NotAttached", uid)
    attachments.delete("watched")
    attachments.wait_gone("watched", timeout=WAIT)

    assert operator_writes(emulator, workspace, since) == []
    reads = [e for e in emulator.requests(since) if e["principal"] == OPERATOR_PRINCIPAL
             and workspace.name in e["path"]]
    assert reads and {e["method"] for e in reads} == {"GET"}  # it did look
    stayed_on_loopback(attached, detached)


def test_watch_first_then_manage_then_let_go(
    emulator: Emulator, operator: OperatorProcess, workspace: Workspace,
    attachments: Attachments,
) -> None:
    """Observe -> Manage adopts with one PUT; back to Observe, the delete that follows leaves
    the compute attached, with no ARM write."""
    # Attached out of band, as SDK v1 leaves an attachment: no tags.
    emulator.admin("PUT", f"/computes/{workspace.subscription}/{workspace.resource_group}/"
                          f"{workspace.name}/legacy-batch",
                   json={"properties": {"computeType": "Batch",
                                        "resourceId": workspace.account_id()}})
    since = emulator.last_seq()
    attachments.create("legacy-batch", workspace.spec(managementPolicy="Observe"))
    attachments.wait_condition("legacy-batch", reason="Attached")
    assert operator_writes(emulator, workspace, since) == []

    attachments.patch_spec("legacy-batch", {"managementPolicy": "Manage"})
    managed = attachments.wait_condition("legacy-batch", reason="Attached")
    assert managed["metadata"]["finalizers"] == ["batchcompute.azureml.dev/finalizer"]
    assert operator_writes(emulator, workspace, since) == [("PUT", "legacy-batch")]
    wait_event(attachments, "legacy-batch", "Normal", "Adopting")
    assert workspace.computes(emulator)["legacy-batch"]["tags"][OWNER_UID_TAG] == \
        managed["metadata"]["uid"]

    attachments.patch_spec("legacy-batch", {"managementPolicy": "Observe"})
    attachments.wait_condition("legacy-batch", reason="Attached")
    attachments.delete("legacy-batch")
    attachments.wait_gone("legacy-batch", timeout=WAIT)
    assert operator_writes(emulator, workspace, since) == [("PUT", "legacy-batch")]
    left = workspace.computes(emulator)["legacy-batch"]
    assert left["properties"]["provisioningState"] == "Succeeded"
    assert left["tags"][OWNER_UID_TAG] == managed["metadata"]["uid"]  # as Manage left it
    wait_event(attachments, "legacy-batch", "Normal", "LeftInPlace")
