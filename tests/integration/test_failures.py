"""Failures as a user sees them: permanent ARM errors, detach errors, bad settings, and what
the operator's messages say about them (issue 15, items 5, 7, 8 and 9).

Every test runs a real operator process against the real kube-apiserver and the shared ARM
emulator. "Steady" is checked by sampling the resource while the operator retries, and the
retries themselves are counted in the emulator's request log, so no test sleeps for a fixed
time: each waits for the number of attempts it needs to see, with a deadline.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from observing import brief, conditions, kubectl_get_bca, last_seq, writes_to
from operator_proc import REPO_ROOT, Attachments, OperatorProcess, Workspace, free_port
from waiting import wait_for

pytestmark = pytest.mark.usefixtures("restore_emulator")  # it changes the shared emulator


# -- helpers ---------------------------------------------------------------------------------


def compute_regex(ws: Workspace, name: str) -> str:
    return f"/workspaces/{re.escape(ws.name)}/computes/{re.escape(name)}$"


def missing_account(ws: Workspace, account: str = "doesnotexist") -> dict[str, Any]:
    return {"workspace": ws.ref,
            "batchAccount": {"resourceGroup": ws.batch_resource_group, "accountName": account}}


# -- item 5: a permanent failure backs off, steadily Stalled ------------------------------------


def test_missing_batch_account_stays_stalled_backs_off_and_posts_one_event_per_error(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """Issue 15, item 5. A Batch account that does not exist: ARM fails every attach with
    ResourceNotFound. The resource is Stalled=True from the first failure on and stays so,
    unchanged, through every retry (GitOps health must not flap); the retries are spaced by a
    growing backoff (BCO_FAILURE_RETRY_MIN 1 s doubling to BCO_FAILURE_RETRY_MAX 5 s here),
    not re-sent at each resync (3 s here); one AttachFailed event for that error, not one per
    attempt, and no Attaching event per attempt. A different error is a change: one event
    for it. Once the account exists, the next retry attaches, by itself."""
    name = "nobatch"
    mark = last_seq(emulator)
    start_operator()
    attachments.create(name, missing_account(workspace))
    first = attachments.wait_condition(name, "True", type_="Stalled", reason="ResourceNotFound",
                                       timeout=30)
    since = conditions(first)["Stalled"]["lastTransitionTime"]
    assert "doesnotexist" in conditions(first)["Stalled"]["message"]
    samples = 0

    def steady_until(attempts: int) -> bool:
        nonlocal samples
        conds = conditions(attachments.get(name))
        samples += 1
        assert conds["Stalled"]["status"] == "True", conds
        assert conds["Stalled"]["lastTransitionTime"] == since, conds
        assert conds["Ready"]["status"] == "False", conds
        assert conds["Reconciling"]["status"] == "False", conds
        # Answered attempts only: a PUT still being handled may yet take the fault below.
        answered = [p for p in writes_to(emulator, mark, workspace, name)
                    if p["status"] is not None]
        return len(answered) >= attempts

    wait_for(lambda: steady_until(4), timeout=40, interval=0.1,
             message="four attach attempts")
    reasons = attachments.reasons(name)
    assert reasons.count("AttachFailed") == 1, reasons
    assert reasons.count("Attaching") == 1, reasons

    # The next attempt ends in a different error: a change of error, reported once.
    emulator.add_fault({"method": "PUT", "path_regex": compute_regex(workspace, name),
                        "count": 1, "action": {"operation_result": "Failed",
                                               "code": "BatchAccountLocked",
                                               "message": "The Batch account is locked."}})
    changed = wait_for(
        lambda: (c := conditions(attachments.get(name)).get("Stalled", {})).get("reason")
        == "BatchAccountLocked" and c, timeout=30, message="the new error in Stalled")
    assert changed["status"] == "True" and changed["lastTransitionTime"] == since, changed
    wait_for(lambda: attachments.reasons(name).count("AttachFailed") == 2, timeout=10,
             message="one event for the new error")

    puts = writes_to(emulator, mark, workspace, name)
    gaps = [round(b["time"] - a["time"], 2) for a, b in pairwise(puts)]
    print(f"{len(puts)} PUTs, gaps {gaps} s; Stalled steady over {samples} samples")
    assert len(puts) == 5, brief(puts)
    assert all(gap >= 0.8 for gap in gaps), gaps  # never sooner than BCO_FAILURE_RETRY_MIN
    # The backoff grows past the resync interval (3 s): a resync does not re-PUT.
    assert gaps[-1] > 3.5 and gaps[-1] > gaps[0] + 1, gaps

    # The account appears: the next retry attaches, with no one's help.
    emulator.seed({"batchAccounts": [{"subscriptionId": workspace.subscription,
                                      "resourceGroup": workspace.batch_resource_group,
                                      "name": "doesnotexist", "location": "northeurope"}]})
    attachments.wait_condition(name, "True", reason="Attached", timeout=30)
    reasons = attachments.reasons(name)
    assert reasons.count("Attached") == 1, reasons
    assert reasons.count("Attaching") == 1, reasons
    print(f"events: {reasons}")


# -- item 7: detach failures --------------------------------------------------------------------


def test_unsafe_operation_url_on_detach_is_a_detach_failure_reported_once(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """Issue 15, item 7. ARM answers the first two DELETEs with an operation URL on another
    port of the ARM host. The operator follows neither, and says so as a detach failure
    (DetachFailed, not AttachFailed), naming both origins with their ports; the status shows
    the detach pending (operation Detach, Stalled with the error). The Detaching event is
    posted once across the retries, and the third DELETE, which ARM carries out, ends it."""
    name = "unsafe-detach"
    proc = start_operator()
    attachments.create(name, workspace.spec())
    attachments.wait_condition(name, "True", reason="Attached")
    other = free_port()
    lure = f"https://127.0.0.1:{other}/op"
    emulator.add_fault({"method": "DELETE", "path_regex": compute_regex(workspace, name),
                        "count": 2, "action": {"status": 202,
                                               "headers": {"Azure-AsyncOperation": lure}}})
    mark = last_seq(emulator)
    attachments.delete(name)

    def reported() -> dict[str, Any] | None:
        obj = attachments.get(name)
        if obj is None:
            return None
        stalled = conditions(obj).get("Stalled", {})
        return obj if stalled.get("reason") == "UnsafeOperationUrl" else None

    obj = wait_for(reported, timeout=20, message="UnsafeOperationUrl in Stalled")
    status = obj["status"]
    stalled = conditions(obj)["Stalled"]
    print(f"while blocked: operation {status.get('operation')}, Stalled: {stalled['message']}")
    assert stalled["status"] == "True"
    assert status["operation"]["kind"] == "Detach", status
    assert status["provisioningErrors"][0]["code"] == "UnsafeOperationUrl", status
    assert f"https://127.0.0.1:{other}" in stalled["message"], stalled
    arm_origin = emulator.arm_url.rstrip("/")
    assert arm_origin in stalled["message"], (arm_origin, stalled)
    assert "BCO_ARM_ENDPOINT" in stalled["message"]  # what to check

    attachments.wait_gone(name, timeout=40)
    deletes = writes_to(emulator, mark, workspace, name, "DELETE")
    assert [c["fault"] for c in deletes] == ["status", "status", None], brief(deletes)
    assert [c for c in emulator.requests(mark) if c["path"].rstrip("/") == "/op"] == []
    assert name not in workspace.computes(emulator)
    reasons = attachments.reasons(name)
    print(f"events: {reasons}")
    assert "AttachFailed" not in reasons, reasons
    assert reasons.count("DetachFailed") == 1, reasons
    assert reasons.count("Detaching") == 1, reasons
    assert reasons.count("Detached") == 1, reasons
    failed = [m for _, r, m in attachments.events(name) if r == "DetachFailed"]
    assert f"127.0.0.1:{other}" in failed[0], failed
    assert "Traceback" not in proc.log()


def test_deleting_while_attaching_shows_the_pending_detach(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """Issue 15, item 7. A resource deleted while its attach is running waits for the attach,
    then detaches. Meanwhile its status says so: Reconciling with reason Detaching, "waiting
    for the creating operation", operation Detach; never still Attaching."""
    emulator.set_config({"operation_seconds": 4})
    name = "hasty"
    mark = last_seq(emulator)
    start_operator()
    attachments.create(name, workspace.spec())
    wait_for(lambda: workspace.computes(emulator).get(name, {}).get("properties", {})
             .get("provisioningState") == "Creating", timeout=20, message="the attach running")
    attachments.delete(name)

    def pending() -> dict[str, Any] | None:
        obj = attachments.get(name)
        reconciling = conditions(obj).get("Reconciling", {})
        return obj if reconciling.get("reason") == "Detaching" else None

    obj = wait_for(pending, timeout=10, interval=0.1, message="the pending detach in status")
    reconciling = conditions(obj)["Reconciling"]
    still = workspace.computes(emulator)[name]["properties"]["provisioningState"]
    print(f"compute {still}; Reconciling: {reconciling['message']}; "
          f"operation {obj['status'].get('operation')}")
    assert reconciling["status"] == "True"
    assert "waiting for the creating operation" in reconciling["message"], reconciling
    assert obj["status"]["operation"]["kind"] == "Detach"
    assert conditions(obj)["Ready"]["reason"] != "Attaching"
    attachments.wait_gone(name, timeout=30)
    assert name not in workspace.computes(emulator)
    deletes = writes_to(emulator, mark, workspace, name, "DELETE")
    assert [c["status"] for c in deletes] == [202], brief(deletes)  # once, after the attach
    reasons = attachments.reasons(name)
    assert reasons.count("Detaching") <= 1 and reasons.count("Detached") == 1, reasons


# -- item 8: a bad BCO_CA_BUNDLE ------------------------------------------------------------------


def _bad_bundle(case: str, tmp_path: Path, emulator: Any) -> Path:
    if case == "missing":
        return tmp_path / "no-such-ca.pem"
    if case == "directory":
        return tmp_path
    if case == "not-pem":
        path = tmp_path / "ca.pem"
        path.write_text("this is not a certificate\n")
        return path
    if case == "broken-pem":
        path = tmp_path / "ca.pem"
        path.write_text("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
        return path
    # A private key where the CA should be: the kind of file a wrong Secret key mounts.
    key = Path(emulator.ca_file).parent / "ca-key.pem"
    assert key.is_file(), key
    path = tmp_path / "ca.pem"
    path.write_bytes(key.read_bytes())
    return path


@pytest.mark.parametrize("case", ["missing", "directory", "not-pem", "broken-pem", "private-key"])
def test_a_bad_ca_bundle_stops_the_operator_with_one_line_and_exit_2(
        case: str, installed: Any, emulator: Any, tmp_path: Path) -> None:
    """Issue 15, item 8. BCO_CA_BUNDLE naming no file, or a file without PEM certificates:
    the operator does not start, and says why in one line naming the variable and the path,
    exit code 2, no traceback, like every other setting."""
    bundle = _bad_bundle(case, tmp_path, emulator)
    kubeconfig = installed.operator_kubeconfig or installed.kubeconfig
    env = OperatorProcess(kubeconfig, emulator, ("default",), tmp_path / "unused.log",
                          env_overrides={"BCO_CA_BUNDLE": str(bundle)}).env()
    env["BCO_HEALTH_PORT"] = str(free_port())
    done = subprocess.run([sys.executable, "-m", "batchcompute_operator", "--verbose"],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
                          check=False)  # it must stop by itself: it never becomes healthy
    print(f"{case}: exit {done.returncode}: {done.stderr.strip()}")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, lines
    assert "BCO_CA_BUNDLE" in lines[0] and str(bundle) in lines[0], lines
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stdout == ""


# -- item 9: what the messages say --------------------------------------------------------------


def token_requests(emulator: Any, since: int) -> list[dict[str, Any]]:
    return [r for r in emulator.requests(since) if r["target"] == "identity"]


def status_and_events(attachments: Attachments, name: str) -> str:
    obj = attachments.get(name) or {}
    return json.dumps(obj.get("status", {})) + json.dumps(attachments.events(name))


def operator_lines(proc: Any) -> list[str]:
    """The operator's own log lines (kopf's are left out), without their timestamps."""
    return [line.split(" ", 2)[-1] for line in proc.log().splitlines()
            if " kopf." not in line and line[:4].isdigit()]


ARM_WORDING = ("ARM said", "ARM answered")


def test_identity_endpoint_failure_is_summarised_attributed_to_it_and_logged_once(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """Issue 15, item 9. The managed-identity endpoint fails every token request, answering
    with a long description and fields of its own. What the user and the log see says the
    identity endpoint failed (never worded as an answer from ARM), summarises its answer
    (HTTP status and a bounded description: the end of the description and the other fields
    are not copied), and the failure is logged once, not at every one of the retries."""
    tail = "END-OF-A-LONG-DESCRIPTION"
    other = "ANOTHER-FIELD-OF-THE-ANSWER"
    description = "The token service could not issue a token " + "for a reason " * 10 + tail
    emulator._call("POST", "/_admin/identity", json={
        "fail": True, "status": 500,
        "body": {"statusCode": 500, "message": description, "detail": other}})
    mark = last_seq(emulator)
    proc = start_operator()
    attachments.create("noidentity", workspace.spec())
    attachments.wait_condition("noidentity", "True", type_="Reconciling",
                               reason="AuthenticationFailed", timeout=30)
    # At least two attempts, each of one or more token requests (azure-identity retries).
    wait_for(lambda: len(token_requests(emulator, mark)) >= 8, timeout=40,
             message="eight token requests")
    message = attachments.condition("noidentity", "Reconciling")["message"]
    print(f"Reconciling: {message}")
    assert "the identity endpoint answered HTTP 500" in message, message
    assert "The token service could not issue a token" in message  # summarised, not hidden
    assert not message.startswith("TokenRequestFailed") and "ARM" not in message, message
    seen = status_and_events(attachments, "noidentity")
    for text in (tail, other, emulator.identity_header):
        assert text not in seen, text
        assert text not in proc.log(), text
    lines = operator_lines(proc)
    assert not [line for line in lines if any(w in line for w in ARM_WORDING)], lines
    told = [line for line in lines if "could not issue a token" in line]
    print(f"{len(token_requests(emulator, mark))} token requests; the failure in "
          f"{len(told)} log lines")
    assert 1 <= len(told) <= 3, told
    assert [r for r in emulator.requests(mark) if r["target"] not in ("identity",)
            and r["path"] != "/subscriptions"] == []  # no ARM call without a token


def test_unreadable_token_file_is_attributed_to_the_file(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any, tmp_path: Path) -> None:
    """Issue 15, item 9. A local token file that cannot be read is the file's failure: the
    status and the log say so, and do not word it as something ARM answered. (ARM refuses the
    cached token first, which makes the operator read the file again.)"""
    token_file = tmp_path / "token"
    token_file.write_text(emulator.mint_token())
    proc = start_operator(BCO_CREDENTIAL="static-file", BCO_STATIC_TOKEN_FILE=str(token_file))
    attachments.create("tokenfile", workspace.spec())
    attachments.wait_condition("tokenfile", "True", reason="Attached")
    token_file.unlink()
    emulator._call("DELETE", "/_admin/tokens")
    attachments.wait_condition("tokenfile", "True", type_="Reconciling",
                               reason="AuthenticationFailed", timeout=20)
    message = attachments.condition("tokenfile", "Reconciling")["message"]
    print(f"Reconciling: {message}")
    assert str(token_file) in message and "cannot be read" in message, message
    assert "ARM" not in message, message
    wait_for(lambda: [line for line in operator_lines(proc) if "cannot be read" in line],
             timeout=10, message="the failure in the log")
    told = [line for line in operator_lines(proc) if "cannot be read" in line
            and "wrote status" not in line]
    print("\n".join(told))
    assert told and all("token file" in line for line in told), told
    assert not [line for line in told if any(w in line for w in ARM_WORDING)], told


def test_conflict_and_invalid_spec_messages_and_compute_column(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any, installed: Any) -> None:
    """Issue 15, item 9. A compute of another type with no resource id under the requested
    name reads as such ("a compute of type AmlCompute with no resource id", not "a AmlCompute
    compute for no resource"), and `kubectl get bca` shows in its COMPUTE column the name the
    spec asks for, also for resources in Conflict or with an invalid spec."""
    emulator._call("PUT", f"/_admin/computes/{workspace.subscription}/"
                          f"{workspace.resource_group}/{workspace.name}/gpu-pool",
                   json={"location": "westeurope", "properties": {"computeType": "AmlCompute"}})
    start_operator()
    attachments.create("wants-gpu-pool", workspace.spec(computeName="gpu-pool"))
    attachments.create("both-forms", {"workspace": workspace.ref, "computeName": "asked-name",
                                      "batchAccount": {"resourceId": workspace.account_id(),
                                                       "resourceGroup": "batch-rg",
                                                       "accountName": "another"}})
    attachments.create("by-metadata", {"workspace": workspace.ref, "batchAccount": {}})
    attachments.wait_condition("wants-gpu-pool", "True", type_="Stalled", reason="Conflict")
    attachments.wait_condition("both-forms", "True", type_="Stalled", reason="InvalidSpec")
    attachments.wait_condition("by-metadata", "True", type_="Stalled", reason="InvalidSpec")
    message = attachments.condition("wants-gpu-pool", "Stalled")["message"]
    print(f"Conflict: {message}")
    assert "a compute of type AmlCompute with no resource id" in message, message
    assert "a AmlCompute" not in message and "for no resource" not in message, message

    rows = kubectl_get_bca(installed.kubeconfig, attachments.namespace)
    print("\n".join(f"{name}: {row}" for name, row in rows.items()))
    assert rows["wants-gpu-pool"]["COMPUTE"] == "gpu-pool", rows
    assert rows["both-forms"]["COMPUTE"] == "asked-name", rows
    assert rows["by-metadata"]["COMPUTE"] == "by-metadata", rows
    assert {rows[n]["REASON"] for n in rows} == {"Conflict", "InvalidSpec"}, rows
