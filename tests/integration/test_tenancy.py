"""Tenancy: which workspaces a namespace may target, and per-namespace Azure identities.

The operator has no blanket right to Secrets: a namespace that brings its own identity grants
`get` on that one Secret. A resource can never name a Secret in another namespace.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

from kubernetes.client import CoreV1Api, RbacAuthorizationV1Api
from observing import last_seq
from operator_proc import Attachments, Workspace
from waiting import wait_for

SECRET_VALUE = "s3cr3t-" + uuid.uuid4().hex  # must never show up in logs, events or status


def test_workspace_policy_limits_what_a_namespace_may_target(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    allowed = Workspace.fresh(emulator)
    policy = {attachments.namespace: [f"{allowed.subscription}/{allowed.resource_group}/*"]}
    seq = last_seq(emulator)
    start_operator(BCO_WORKSPACE_POLICY=json.dumps(policy))
    attachments.create("denied", workspace.spec())
    attachments.create("allowed", allowed.spec())
    attachments.wait_condition("allowed", "True")
    attachments.wait_condition("denied", "False", reason="WorkspaceNotAllowed")
    message = attachments.condition("denied", "Stalled")["message"]
    assert workspace.name in message
    assert attachments.namespace in message
    wait_for(lambda: "WorkspaceNotAllowed" in attachments.reasons("denied"), message="event")
    touched = [c["path"] for c in Workspace.calls(emulator, seq)]
    assert touched
    assert not [p for p in touched if f"/workspaces/{workspace.name}" in p]


def test_secret_in_another_namespace_is_refused_before_any_call(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    seq = last_seq(emulator)
    start_operator()
    attachments.create("borrower", workspace.spec(credentials={
        "secretRef": {"name": "azure-identity", "namespace": "kube-system"}}))
    attachments.wait_condition("borrower", "False", reason="InvalidSpec")
    assert "own namespace" in attachments.condition("borrower", "Stalled")["message"]
    assert Workspace.calls(emulator, seq) == []


def test_namespace_identity_needs_an_explicit_grant_and_never_leaks(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any, kube: Any) -> None:
    ns = attachments.namespace
    core = CoreV1Api(kube)
    core.create_namespaced_secret(ns, {
        "metadata": {"name": "azure-identity"},
        "stringData": {"tenantId": "00000000-0000-0000-0000-0000000000aa",
                       "clientId": "00000000-0000-0000-0000-0000000000bb",
                       "clientSecret": SECRET_VALUE}})
    operator = start_operator(AZURE_AUTHORITY_HOST=emulator.arm_url)
    attachments.create("own-id", workspace.spec(credentials={
        "secretRef": {"name": "azure-identity"}}))

    # Without a grant in this namespace the operator cannot read the Secret, and says how.
    cond = attachments.wait_condition("own-id", "False", reason="CredentialsUnavailable")
    message = attachments.condition("own-id", "Reconciling")["message"]
    assert "Role" in message, cond

    # The namespace's admin grants get on exactly that Secret.
    rbac = RbacAuthorizationV1Api(kube)
    rbac.create_namespaced_role(ns, {
        "metadata": {"name": "batchcompute-operator-credentials"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"],
                   "resourceNames": ["azure-identity"], "verbs": ["get"]}]})
    rbac.create_namespaced_role_binding(ns, {
        "metadata": {"name": "batchcompute-operator-credentials"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "batchcompute-operator-credentials"},
        "subjects": [{"kind": "ServiceAccount", "name": "batchcompute-operator",
                      "namespace": "batchcompute-system"}]})
    # Now it reads the Secret and tries that identity (the test bed has no Entra ID, so
    # getting the token fails): the failure is reported, the secret is not.
    attachments.wait_condition("own-id", "False", reason="AuthenticationFailed", timeout=60)
    obj = attachments.get("own-id")
    events = attachments.events("own-id")
    operator.stop()
    assert SECRET_VALUE not in json.dumps(obj)
    assert SECRET_VALUE not in json.dumps(events)
    assert SECRET_VALUE not in operator.log()
    assert SECRET_VALUE not in emulator.log_file.read_text(errors="replace")
    # The grant covers that one Secret: any other in the namespace stays out of reach.
    for resource in ("secrets/azure-identity", "secrets/other"):
        answer = subprocess.run(
            ["kubectl", "--kubeconfig", str(operator.kubeconfig), "auth", "can-i", "get",
             resource, "-n", ns], capture_output=True, text=True, check=False).stdout.strip()
        assert answer == ("yes" if resource.endswith("azure-identity") else "no"), resource
