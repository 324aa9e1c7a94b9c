"""azureml-core 1.61's BatchCompute flow, unmodified, against the emulator.

Each test is what an SDK v1 user does, step by step, and then what the emulator saw: the
requests azureml-core really sends (api-versions, `//` paths, the regional API host) are the
ones the emulator must answer as Azure does.
"""

from __future__ import annotations

from typing import Any

from .conftest import BATCH_ACCOUNT, SUBSCRIPTION, WORKSPACE, Emulator
from .sdkv1 import SdkV1

ACCOUNT_ID = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{BATCH_ACCOUNT['resourceGroup']}"
    f"/providers/Microsoft.Batch/batchAccounts/{BATCH_ACCOUNT['name']}"
)
WORKSPACE_ID = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{WORKSPACE['resourceGroup']}"
    f"/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE['name']}"
)


def _compute_id(name: str) -> str:
    return f"{WORKSPACE_ID}/computes/{name}"


def _seen(emulator: Emulator, since: int) -> list[tuple[str, str, str | None, int | None]]:
    """(method, path, api-version, status) of every request since `since`."""
    return [
        (e["method"], e["path"], e["query"].get("api-version"), e["status"])
        for e in emulator.requests(since)
    ]


def _stayed_on_loopback(*results: dict[str, Any]) -> None:
    for result in results:
        assert result["outside_loopback"] == [], result["outside_loopback"]


def test_workspace_opens_through_subscriptions_and_discovery(
    sdkv1: SdkV1, emulator: Emulator
) -> None:
    since = emulator.last_seq()
    ws = sdkv1.run("workspace")
    assert ws["name"] == WORKSPACE["name"]
    assert ws["location"] == WORKSPACE["location"]
    assert ws["discovery_url"] == f"{emulator.arm_url}/discovery"
    assert ws["api_url"] == emulator.arm_url
    _stayed_on_loopback(ws)

    seen = _seen(emulator, since)
    identity = [s for s in seen if s[1] == "/msi/token"]
    assert identity and all(s[3] == 200 for s in identity)
    arm = [s for s in seen if s[1] != "/msi/token"]
    assert arm == [
        ("GET", "/subscriptions", "2022-12-01", 200),
        ("GET", WORKSPACE_ID, "2022-05-01", 200),
        ("GET", "/discovery", None, 200),
    ]


def test_attach_by_resource_group_and_account_name(sdkv1: SdkV1, emulator: Emulator) -> None:
    emulator.configure(operation_seconds=1.0)  # long enough for one "InProgress" poll
    since = emulator.last_seq()
    attached = sdkv1.run(
        "attach",
        "--name",
        "batch-rg",
        "--account-resource-group",
        str(BATCH_ACCOUNT["resourceGroup"]),
        "--account-name",
        str(BATCH_ACCOUNT["name"]),
    )
    assert attached["class"] == "BatchCompute"
    assert attached["provisioning_state"] == "Succeeded"
    assert attached["provisioning_errors"] is None
    assert attached["cluster_resource_id"] == ACCOUNT_ID
    assert attached["cluster_location"] == BATCH_ACCOUNT["location"]
    printed = attached["printed"]
    assert printed.startswith("InProgress.")
    assert 'Provisioning operation finished, operation "Succeeded"' in printed
    _stayed_on_loopback(attached)

    entries = emulator.requests(since)
    put = next(e for e in entries if e["method"] == "PUT")
    # SDK v1 joins "https://host/" and the compute id, and attaches with api-version 2020-02-02.
    assert put["path"] == "/" + _compute_id("batch-rg")
    assert put["query"] == {"api-version": "2020-02-02"}
    assert put["body"] == {
        "location": WORKSPACE["location"],
        "properties": {"computeType": "Batch", "resourceId": ACCOUNT_ID},
    }
    assert put["status"] == 201
    polls = [e for e in entries if "computeOperationsStatus" in e["path"]]
    assert [p["status"] for p in polls] == [200] * len(polls) and len(polls) >= 2
    # Reads of the compute go to the regional API host named by the discovery document.
    reads = [e for e in entries if e["path"] == "/rp/workspaces" + _compute_id("batch-rg")]
    assert reads and all(e["status"] == 200 for e in reads)


def test_attach_by_resource_id_then_read_back(sdkv1: SdkV1, emulator: Emulator) -> None:
    emulator.configure(operation_seconds=0.0)
    attached = sdkv1.run("attach", "--name", "batch-id", "--resource-id", ACCOUNT_ID)
    assert attached["provisioning_state"] == "Succeeded"
    assert 'operation "Succeeded"' in attached["printed"]

    status = sdkv1.run("status", "--name", "batch-id")
    assert status["class"] == "BatchCompute"  # ComputeTarget(ws, name) picked the subclass
    assert status["status"] == "Succeeded"  # get_status()
    assert status["serialized"] == {  # serialize() after refresh_state()
        "id": _compute_id("batch-id"),
        "name": "batch-id",
        "tags": None,
        "location": WORKSPACE["location"],
        "properties": {
            "computeType": "Batch",
            "computeLocation": BATCH_ACCOUNT["location"],
            "description": None,
            "resourceId": ACCOUNT_ID,
            "provisioningErrors": None,
            "provisioningState": "Succeeded",
        },
    }
    _stayed_on_loopback(attached, status)


def test_compute_targets_lists_every_batch_compute(sdkv1: SdkV1, emulator: Emulator) -> None:
    emulator.configure(operation_seconds=0.0)
    sdkv1.run("attach", "--name", "batch-listed", "--resource-id", ACCOUNT_ID)
    # Attached by someone else (the operator, say), tags and all.
    emulator.admin(
        "PUT",
        f"/computes/{SUBSCRIPTION}/{WORKSPACE['resourceGroup']}/{WORKSPACE['name']}/batch-other",
        json={
            "tags": {"managed-by": "batchcompute-operator"},
            "properties": {
                "computeType": "Batch",
                "resourceId": ACCOUNT_ID,
                "computeLocation": BATCH_ACCOUNT["location"],
            },
        },
    )
    emulator.configure(page_size=1)  # SDK v1 follows nextLink on the regional host too
    try:
        listed = sdkv1.run("list")["compute_targets"]
    finally:
        emulator.configure(page_size=100)
    assert {"batch-listed", "batch-other"} <= set(listed)
    other = listed["batch-other"]
    assert other["class"] == "BatchCompute"
    assert other["tags"] == {"managed-by": "batchcompute-operator"}
    assert other["provisioning_state"] == "Succeeded"


def test_attach_to_a_missing_account_fails_as_azure_does(sdkv1: SdkV1, emulator: Emulator) -> None:
    emulator.configure(operation_seconds=0.0)
    missing = ACCOUNT_ID.replace(str(BATCH_ACCOUNT["name"]), "nosuchacct")
    failed = sdkv1.run("attach", "--name", "batch-ghost", "--resource-id", missing, expect_ok=False)
    assert failed["ok"] is False
    assert failed["error"] == "ComputeTargetException"
    assert "current provisioning state: Failed" in failed["message"]
    assert "ResourceNotFound" in failed["message"]
    _stayed_on_loopback(failed)


def test_delete_raises_and_detach_removes_the_attachment(sdkv1: SdkV1, emulator: Emulator) -> None:
    emulator.configure(operation_seconds=0.0)
    sdkv1.run("attach", "--name", "batch-gone", "--resource-id", ACCOUNT_ID)
    refused = sdkv1.run("delete", "--name", "batch-gone")
    assert refused["raised"] == "ComputeTargetException"
    assert "use detach" in refused["message"]

    since = emulator.last_seq()
    detached = sdkv1.run("detach", "--name", "batch-gone")
    assert 'operation "Succeeded"' in detached["printed"]
    delete = next(e for e in emulator.requests(since) if e["method"] == "DELETE")
    assert delete["path"] == "/" + _compute_id("batch-gone")
    assert delete["query"] == {"api-version": "2020-02-02", "underlyingResourceAction": "detach"}
    assert delete["status"] == 202

    gone = sdkv1.run("status", "--name", "batch-gone", expect_ok=False)
    assert gone["error"] == "ComputeTargetException"
    assert "ComputeTargetNotFound" in gone["message"]
    # The Batch account itself is never touched: it can be attached again at once.
    again = sdkv1.run("attach", "--name", "batch-gone", "--resource-id", ACCOUNT_ID)
    assert again["provisioning_state"] == "Succeeded"
    _stayed_on_loopback(refused, detached, gone, again)
