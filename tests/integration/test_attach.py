"""The attach/detach life cycle as a user sees it: kubectl in, status/events/ARM state out.

Each test runs its own operator process (as the operator's ServiceAccount, under deploy/'s
RBAC) against the real kube-apiserver and the ARM emulator, and checks the emulator's request
log for exactly which ARM calls were made.
"""

from __future__ import annotations

import subprocess
from typing import Any

import httpx
import pytest
from kubernetes.client.exceptions import ApiException
from operator_proc import Attachments, Workspace
from waiting import wait_for

FINALIZER = "batchcompute.azureml.dev/finalizer"


def writes(calls: list[dict[str, Any]], method: str | None = None) -> list[dict[str, Any]]:
    return [c for c in calls if c["method"] in ((method,) if method else ("PUT", "DELETE"))]




def test_attach_by_account_name_then_detach_on_delete(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    seq = emulator.requests()[-1]["seq"] if emulator.requests() else 0
    operator = start_operator()
    attachments.create("mybatch", workspace.spec(description="team batch pool",
                                           tags={"team": "ml"}))
    obj = attachments.wait_condition("mybatch", "True", reason="Attached")

    status = obj["status"]
    assert status["provisioningState"] == "Succeeded"
    assert status["provisioningErrors"] == []
    assert status["computeId"].lower() == workspace.compute_path("mybatch").lower()
    assert status["clusterResourceId"].lower() == workspace.account_id().lower()
    assert status["computeLocation"] == "northeurope"
    assert status["isAttachedCompute"] is True
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert "operation" not in status
    assert FINALIZER in obj["metadata"]["finalizers"]
    # Events are posted after the status write they belong to: they follow Ready shortly.
    wait_for(lambda: {"Attaching", "Attached"} <= set(attachments.reasons("mybatch")),
             timeout=10, message="Attaching and Attached events")
    # kopf's bookkeeping stays out of metadata (and so out of GitOps diffs).
    assert not [a for a in obj["metadata"].get("annotations", {}) if "kopf" in a]

    calls = Workspace.calls(emulator, seq)
    puts = writes(calls, "PUT")
    assert len(puts) == 1, puts
    assert puts[0]["body"]["location"] == "westeurope"
    assert puts[0]["body"]["properties"] == {
        "computeType": "Batch", "resourceId": workspace.account_id(),
        "description": "team batch pool"}
    assert puts[0]["body"]["tags"]["team"] == "ml"
    assert puts[0]["query"]["api-version"] == "2020-02-02"
    attach_calls = len(calls)
    # The metrics endpoint reports what the process asked of ARM, as ASO names it.
    assert operator.metric("azure_successful_requests_total") >= len(calls)
    assert operator.metric("azure_successful_requests_total", resource="computes",
                           requestType="PUT", responseCode="201") == 1
    assert operator.metric("batchcompute_arm_list_pages_count") >= 1
    assert operator.metric("azure_successful_requests_total", responseCode="429") == 0
    assert httpx.get(f"http://127.0.0.1:{operator.health_port}/healthz",
                     timeout=5).json()["ok"] is True

    detach_seq = emulator.requests()[-1]["seq"]
    attachments.delete("mybatch")
    attachments.wait_gone("mybatch")
    dcalls = Workspace.calls(emulator, detach_seq)
    deletes = writes(dcalls, "DELETE")
    assert len(deletes) == 1
    assert deletes[0]["query"]["underlyingResourceAction"] == "Detach"
    assert "mybatch" not in workspace.computes(emulator)
    accounts = emulator.seed({})  # the Batch account itself is untouched
    assert accounts is not None
    print(f"ARM calls: attach {attach_calls} ({len(writes(calls))} writes), "
          f"detach {len(dcalls)} ({len(deletes)} writes)")


def test_attach_by_resource_id(start_operator: Any, attachments: Attachments,
                               workspace: Workspace, emulator: Any) -> None:
    seq = emulator.requests()[-1]["seq"] if emulator.requests() else 0
    start_operator()
    attachments.create("byid", {"workspace": workspace.ref, "computeName": "batch-by-id",
                                "batchAccount": {"resourceId": workspace.account_id()}})
    obj = attachments.wait_condition("byid", "True", reason="Attached")
    assert obj["status"]["computeId"].endswith("/computes/batch-by-id")
    puts = writes(Workspace.calls(emulator, seq), "PUT")
    assert len(puts) == 1
    assert puts[0]["path"].endswith("/computes/batch-by-id")
    assert puts[0]["body"]["properties"]["resourceId"] == workspace.account_id()


@pytest.mark.parametrize(("spec_patch", "fragment"), [
    ({"batchAccount": {"resourceId": "/subscriptions/x"}}, "batchAccount.resourceId"),
    ({"batchAccount": {"accountName": "UPPER"}}, "accountName"),
    ({"workspace": {"subscriptionId": "not-a-guid", "resourceGroup": "rg", "name": "wsx"}},
     "subscriptionId"),
    ({"computeName": "9starts-with-digit"}, "computeName"),
    ({"deletionPolicy": "Delete"}, "deletionPolicy"),
])
def test_schema_rejects_invalid_specs(installed: Any, attachments: Attachments,
                                      workspace: Workspace, spec_patch: dict[str, Any],
                                      fragment: str) -> None:
    with pytest.raises(ApiException) as err:
        attachments.create("invalid", {**workspace.spec(), **spec_patch})
    assert err.value.status == 422
    assert fragment in err.value.body


def test_invalid_spec_beyond_the_schema_is_reported_with_zero_arm_calls(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """Both forms at once passes a v1.20 schema (CEL is not evaluated there): the operator's own
    validation, with the SDK's message, catches it before any ARM call."""
    seq = emulator.requests()[-1]["seq"] if emulator.requests() else 0
    start_operator()
    attachments.create("both", {"workspace": workspace.ref, "batchAccount": {
        "resourceId": workspace.account_id(), "resourceGroup": "batch-rg",
        "accountName": "another"}})
    obj = attachments.wait_condition("both", "False", reason="InvalidSpec")
    stalled = attachments.condition("both", "Stalled")
    assert stalled["status"] == "True"
    assert "do not provide resource_group" in stalled["message"]
    assert obj["status"]["provisioningErrors"][0]["code"] == "InvalidSpec"
    wait_for(lambda: "InvalidSpec" in attachments.reasons("both"), message="InvalidSpec event")
    assert Workspace.calls(emulator, seq) == []
    # Deleting it needs no ARM call either: nothing was ever attached.
    attachments.delete("both")
    attachments.wait_gone("both")
    assert writes(Workspace.calls(emulator, seq)) == []


def test_attach_of_missing_batch_account_fails_with_the_arm_error(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    start_operator()
    attachments.create("missing", {"workspace": workspace.ref, "batchAccount": {
        "resourceGroup": workspace.batch_resource_group, "accountName": "doesnotexist"}})
    # The Ready reason names ARM's error code; the event says what failed.
    obj = attachments.wait_condition("missing", "False", reason="ResourceNotFound")
    print(obj["status"])
    status = obj["status"]
    assert status["provisioningState"] == "Failed", status
    assert status["provisioningErrors"][0]["code"] == "ResourceNotFound"
    assert "doesnotexist" in status["provisioningErrors"][0]["message"]
    assert attachments.condition("missing", "Stalled")["status"] == "True"
    wait_for(lambda: "AttachFailed" in attachments.reasons("missing"), message="event")


def test_existing_attachment_of_the_same_account_is_adopted(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    with emulator.arm(emulator.mint_token()) as arm:
        resp = arm.put(workspace.compute_path("legacy"), params={"api-version": "2020-02-02"},
                       json={"location": "westeurope", "properties": {
                           "computeType": "Batch", "resourceId": workspace.account_id()}})
        assert resp.status_code == 201
    wait_for(lambda: workspace.computes(emulator)["legacy"]["properties"]["provisioningState"]
             == "Succeeded", message="pre-existing attachment")
    seq = emulator.requests()[-1]["seq"]
    start_operator()
    attachments.create("legacy", workspace.spec())
    attachments.wait_condition("legacy", "True", reason="Attached")
    puts = writes(Workspace.calls(emulator, seq), "PUT")
    # One PUT to record ownership on the compute; same account, nothing re-pointed.
    assert len(puts) == 1
    tags = workspace.computes(emulator)["legacy"]["tags"]
    assert tags["batchcompute-operator.owner"] == f"{attachments.namespace}/legacy"


def test_conflicting_compute_is_left_untouched(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    with emulator.arm(emulator.mint_token()) as arm:
        resp = arm.put(workspace.compute_path("taken"), params={"api-version": "2020-02-02"},
                       json={"location": "westeurope", "properties": {
                           "computeType": "Batch",
                           "resourceId": workspace.account_id("someoneelses")}})
        assert resp.status_code == 201
    seq = emulator.requests()[-1]["seq"]
    start_operator()
    attachments.create("taken", workspace.spec())
    attachments.wait_condition("taken", "False", reason="Conflict")
    message = attachments.condition("taken", "Stalled")["message"]
    assert "someoneelses" in message
    wait_for(lambda: "Conflict" in attachments.reasons("taken"), message="Conflict event")
    # Deleting our resource must not detach what is not ours.
    attachments.delete("taken")
    attachments.wait_gone("taken")
    assert writes(Workspace.calls(emulator, seq)) == []
    assert "taken" in workspace.computes(emulator)


def test_orphan_policy_leaves_the_attachment(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    start_operator()
    attachments.create("keepme", workspace.spec(deletionPolicy="Orphan"))
    attachments.wait_condition("keepme", "True")
    seq = emulator.requests()[-1]["seq"]
    attachments.delete("keepme")
    attachments.wait_gone("keepme")
    assert writes(Workspace.calls(emulator, seq), "DELETE") == []
    assert "keepme" in workspace.computes(emulator)


def test_delete_while_attach_is_in_flight_ends_detached(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    emulator.set_config({"operation_seconds": 3})
    try:
        start_operator()
        attachments.create("hasty", workspace.spec())
        wait_for(lambda: "hasty" in workspace.computes(emulator), message="PUT sent")
        attachments.delete("hasty")
        attachments.wait_gone("hasty", timeout=45)
    finally:
        emulator.set_config({"operation_seconds": 1})
    assert "hasty" not in workspace.computes(emulator)


def test_restart_mid_operation_converges_without_a_second_put(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    emulator.set_config({"operation_seconds": 4})
    try:
        seq = emulator.requests()[-1]["seq"]
        first = start_operator()
        attachments.create("sturdy", workspace.spec())
        wait_for(lambda: (attachments.get("sturdy") or {}).get("status", {}).get("operation"),
                 message="operation recorded in status")
        first.kill()
        start_operator()
        attachments.wait_condition("sturdy", "True", timeout=45)
    finally:
        emulator.set_config({"operation_seconds": 1})
    assert len(writes(Workspace.calls(emulator, seq), "PUT")) == 1


@pytest.mark.usefixtures("restore_emulator")
def test_out_of_band_detach_is_repaired_on_resync(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    resync = 12.0
    start_operator(BCO_RESYNC_INTERVAL=f"{resync:g}")
    attachments.create("drifty", workspace.spec())
    attachments.wait_condition("drifty", "True")
    # A slow ARM: the repairing PUT is answered after the pass that LISTed the drift has
    # ended and its loop has gone to sleep until the next resync.
    emulator.set_config({"latency_ms": 400})
    with emulator.arm(emulator.mint_token()) as arm:
        resp = arm.delete(workspace.compute_path("drifty"),
                          params={"api-version": "2020-02-02",
                                  "underlyingResourceAction": "Detach"})
        assert resp.status_code in (200, 202)
    wait_for(lambda: "drifty" not in workspace.computes(emulator), message="detached by hand")
    wait_for(lambda: "Drifted" in attachments.reasons("drifty"), timeout=resync + 10,
             message="Drifted event")
    # The event follows the repairing PUT: Ready again after its operation (1 s) and the
    # next poll (0.5 s), not at the next resync.
    attachments.wait_condition("drifty", "True", timeout=resync / 2)
    assert "drifty" in workspace.computes(emulator)


def test_kubectl_wait_for_ready(start_operator: Any, attachments: Attachments,
                                workspace: Workspace, installed: Any) -> None:
    start_operator()
    attachments.create("waitable", workspace.spec())
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(installed.kubeconfig), "-n", attachments.namespace,
         "wait", "--for=condition=Ready", "--timeout=60s", "bca/waitable"],
        capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stderr
    assert "condition met" in result.stdout
    table = subprocess.run(
        ["kubectl", "--kubeconfig", str(installed.kubeconfig), "-n", attachments.namespace,
         "get", "bca"], capture_output=True, text=True, timeout=30, check=True).stdout
    header = table.splitlines()[0].split()
    assert header[:6] == ["NAME", "WORKSPACE", "COMPUTE", "STATE", "READY", "REASON"]
    assert "Succeeded" in table
    assert "True" in table


def test_spec_change_detaches_the_old_account_and_attaches_the_new(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    emulator.seed({"batchAccounts": [{"subscriptionId": workspace.subscription,
                                      "resourceGroup": workspace.batch_resource_group,
                                      "name": workspace.account + "b",
                                      "location": "northeurope"}]})
    start_operator()
    attachments.create("mover", workspace.spec())
    attachments.wait_condition("mover", "True")
    seq = emulator.requests()[-1]["seq"]
    attachments.patch_spec("mover", {"batchAccount": {
        "resourceGroup": workspace.batch_resource_group, "accountName": workspace.account + "b"}})
    obj = attachments.wait_condition("mover", "True", timeout=45)
    assert obj["status"]["clusterResourceId"].lower() == \
        workspace.account_id(workspace.account + "b").lower()
    calls = writes(Workspace.calls(emulator, seq))
    assert [c["method"] for c in calls] == ["DELETE", "PUT"]
    reasons = attachments.reasons("mover")
    assert "Detaching" in reasons
    assert "Detached" in reasons
