"""Credentials, seen from outside: a token ARM refuses is replaced without a restart, at a
bounded rate, and credentials that are missing are a steady Stalled, not a retry forever.

Only what users and auditors can see is checked: status conditions and events, the operator's
log, and the emulator's request log, where token requests to the managed-identity endpoint
have target "identity". The operator uses managed identity unless a test says otherwise.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from observing import last_seq
from operator_proc import Attachments, Workspace, free_port
from waiting import wait_for


def token_requests(emulator: Any, since: int) -> list[dict[str, Any]]:
    return [r for r in emulator.requests(since) if r["target"] == "identity"]


def arm_calls(emulator: Any, since: int) -> list[dict[str, Any]]:
    """ARM requests, without token requests and the operator's token-less readiness probe
    (GET /subscriptions), which asks ARM for nothing."""
    return [r for r in emulator.requests(since) if r["target"] != "identity"
            and not (r["path"] == "/subscriptions" and r["auth"] == "none")]


def refused(emulator: Any, since: int) -> list[dict[str, Any]]:
    return [r for r in arm_calls(emulator, since) if r["status"] == 401]


def status_and_events(attachments: Attachments, name: str) -> str:
    obj = attachments.get(name) or {}
    return json.dumps(obj.get("status", {})) + json.dumps(attachments.events(name))


def test_a_revoked_token_is_replaced_without_a_restart(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """Issue 15, item 2: ARM stops accepting the operator's token (every token is revoked)
    while the identity endpoint stays healthy. The next ARM call is refused once; the operator
    gets a new token from the identity endpoint and carries on, with no restart."""
    start = last_seq(emulator)
    proc = start_operator()
    attachments.create("revoked", workspace.spec())
    attachments.wait_condition("revoked", "True", reason="Attached", timeout=40)
    before = len(token_requests(emulator, start))

    mark = last_seq(emulator)
    assert emulator._call("DELETE", "/_admin/tokens").json()["revoked"] >= 1
    # The next resync (3 s in the test bed) lists the workspace with the revoked token.
    wait_for(lambda: refused(emulator, mark), timeout=20, message="ARM refusing the old token")
    time.sleep(10)  # three more resyncs
    tokens = token_requests(emulator, mark)
    calls = arm_calls(emulator, mark)
    print(f"token requests: {before} before the revocation, {len(tokens)} in the 10 s after "
          f"it; ARM calls in that time: {len(calls)}, refused: {len(refused(emulator, mark))}")
    assert len(tokens) == 1, tokens  # exactly one fresh token
    assert [c["status"] for c in tokens] == [200]
    assert 1 <= len(refused(emulator, mark)) <= 2, calls  # only what carried the old token
    accepted = [c for c in calls if c["status"] == 200 and c["auth"] == "valid"]
    assert accepted and accepted[-1] is calls[-1], calls
    assert [c for c in calls if c["method"] != "GET"] == []  # nothing re-attached
    assert attachments.condition("revoked")["status"] == "True"
    secret = emulator.identity_header
    assert secret not in status_and_events(attachments, "revoked")
    assert secret not in proc.log()


def test_a_persistently_refused_identity_is_not_asked_again_and_again(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """Tokens ARM never accepts (issued for another audience): after the first refusal one
    fresh token is requested, and then none for 30 s (the bound per principal); a token ARM
    refused is never sent again, so ARM is not asked again either."""
    mark = last_seq(emulator)
    proc = start_operator(BCO_ARM_AUDIENCE="https://vault.azure.net")
    attachments.create("refused", workspace.spec())
    attachments.wait_condition("refused", "False", reason="AuthenticationFailed", timeout=30)
    time.sleep(15)  # today's backoff (0.5 s doubling to 5 s) would retry about 6 times
    tokens = token_requests(emulator, mark)
    refusals = refused(emulator, mark)
    print(f"in {15}s after the first refusal: {len(tokens)} token requests, "
          f"{len(refusals)} ARM 401s")
    assert len(tokens) == 2, tokens  # the first token, and one fresh one after the refusal
    assert len(refusals) <= 2, refusals
    assert {c["auth"] for c in refusals} == {"invalid"}
    assert attachments.condition("refused")["status"] == "False"
    assert emulator.identity_header not in status_and_events(attachments, "refused")
    assert emulator.identity_header not in proc.log()


def test_missing_environment_credentials_are_stalled(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """Issue 15, item 6: BCO_CREDENTIAL=environment with none of its variables. Nothing can
    fix that but a change of configuration: Stalled with reason CredentialsUnavailable, steady,
    naming the credential and what it lacks; nothing is sent to ARM."""
    mark = last_seq(emulator)
    start_operator(BCO_CREDENTIAL="environment")
    attachments.create("noenv", workspace.spec())
    attachments.wait_condition("noenv", "True", type_="Stalled", reason="CredentialsUnavailable",
                               timeout=30)
    time.sleep(6)  # several retries later it is still Stalled, not back to Reconciling
    stalled = attachments.condition("noenv", "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "CredentialsUnavailable"
    assert attachments.condition("noenv", "Reconciling")["status"] == "False"
    assert "EnvironmentCredential" in stalled["message"], stalled
    assert "AZURE_CLIENT_ID" in stalled["message"], stalled
    assert arm_calls(emulator, mark) == []
    # One event for the failure, not one per retry.
    warnings = [(r, m) for t, r, m in attachments.events("noenv") if t == "Warning"]
    assert len(warnings) == 1 and "EnvironmentCredential" in warnings[0][1], warnings
    print(f"Stalled message: {stalled['message']}")


def test_default_credential_with_nothing_configured_is_stalled_with_every_reason(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any, tmp_path: Path) -> None:
    """Issue 15, item 6: BCO_CREDENTIAL=default with nothing for any credential of the chain
    (no variables, no managed identity endpoint answering, no developer tools or logins).
    The message keeps every chained credential's reason, not only the first line."""
    mark = last_seq(emulator)
    start_operator(BCO_CREDENTIAL="default", IDENTITY_ENDPOINT="", IDENTITY_HEADER="",
                   AZURE_POD_IDENTITY_AUTHORITY_HOST=f"http://127.0.0.1:{free_port()}",
                   PATH=str(tmp_path / "no-tools"), HOME=str(tmp_path),
                   AZURE_CONFIG_DIR=str(tmp_path / "az"))
    attachments.create("nodefault", workspace.spec())
    attachments.wait_condition("nodefault", "True", type_="Stalled",
                               reason="CredentialsUnavailable", timeout=60)
    message = attachments.condition("nodefault", "Stalled")["message"]
    assert attachments.condition("nodefault", "Reconciling")["status"] == "False"
    warnings = [(r, m) for t, r, m in attachments.events("nodefault") if t == "Warning"]
    assert len(warnings) == 1 and "DefaultAzureCredential" in warnings[0][1], warnings
    for name in ("DefaultAzureCredential", "EnvironmentCredential", "WorkloadIdentityCredential",
                 "ManagedIdentityCredential", "AzureCliCredential"):
        assert name in message, message
    assert "\n" not in message and "https://" not in message
    assert arm_calls(emulator, mark) == []
    print(f"Stalled message: {message}")
