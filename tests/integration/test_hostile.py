"""Hostile input on both sides: specs written to break out of their ARM path, and ARM answers
that are not what the operator expects.

Every hostile spec must be stopped before it reaches ARM: either the API server refuses it
(422, naming the field), or it passes the schema (the test bed's v1.20 API server does not
evaluate CEL) and the operator reports Ready=False/InvalidSpec with a message naming the field,
posts an InvalidSpec event, and makes no ARM call at all. On the ARM side, a compute of another
type is a conflict that is never written to, and a LIST that answers garbage is retried
without the operator falling over.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from kubernetes.client.exceptions import ApiException
from observing import last_seq
from operator_proc import Attachments, Workspace
from waiting import wait_for

CYR_A = "\u0430"  # CYRILLIC SMALL LETTER A
LONG_S = "\u017f"  # LATIN SMALL LETTER LONG S: RE2's (?i:s) matches it
ZWSP = "\u200b"  # ZERO WIDTH SPACE
Spec = dict[str, Any]


def writes(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in calls if c["method"] in ("PUT", "DELETE")]


def by_name(ws: Workspace, **extra: Any) -> Spec:
    return {"workspace": ws.ref,
            "batchAccount": {"resourceGroup": ws.batch_resource_group, "accountName": ws.account},
            **extra}


def by_id(ws: Workspace, rid: str | None = None, **extra: Any) -> Spec:
    return {"workspace": ws.ref, "batchAccount": {"resourceId": rid or ws.account_id()}, **extra}


def ws_with(ws: Workspace, **fields: Any) -> Spec:
    return by_name(ws, workspace={**ws.ref, **fields})


def account_with(ws: Workspace, **fields: Any) -> Spec:
    return {"workspace": ws.ref, "batchAccount": fields}


@dataclass(frozen=True)
class Case:
    label: str
    build: Callable[[Workspace], Spec]
    field: str  # what the refusal must name
    name: str = ""  # metadata.name; derived from the label when empty


# The v1.20 schema refuses these; the 422 must name the field.
SCHEMA_CASES = [
    Case("workspace name with a Cyrillic a", lambda w: ws_with(w, name=w.name + CYR_A),
         "spec.workspace.name"),
    Case("workspace name with a zero-width space", lambda w: ws_with(w, name=w.name + ZWSP),
         "spec.workspace.name"),
    Case("workspace name with a slash", lambda w: ws_with(w, name="ws/../other"),
         "spec.workspace.name"),
    Case("workspace group '..'", lambda w: ws_with(w, resourceGroup=".."),
         "spec.workspace.resourceGroup"),
    Case("workspace group with '/'", lambda w: ws_with(w, resourceGroup="rg/x"),
         "spec.workspace.resourceGroup"),
    Case("workspace group with %2F", lambda w: ws_with(w, resourceGroup="rg%2F.."),
         "spec.workspace.resourceGroup"),
    Case("workspace group with '?'", lambda w: ws_with(w, resourceGroup="rg?api-version=1"),
         "spec.workspace.resourceGroup"),
    Case("workspace group with '#'", lambda w: ws_with(w, resourceGroup="rg#x"),
         "spec.workspace.resourceGroup"),
    Case("workspace group with a space", lambda w: ws_with(w, resourceGroup="rg x"),
         "spec.workspace.resourceGroup"),
    Case("workspace group of 91", lambda w: ws_with(w, resourceGroup="r" * 91),
         "spec.workspace.resourceGroup"),
    Case("subscription with a fullwidth digit",
         lambda w: ws_with(w, subscriptionId=w.subscription[:-1] + "\uff11"),
         "spec.workspace.subscriptionId"),
    Case("subscription as a number", lambda w: ws_with(w, subscriptionId=1),
         "spec.workspace.subscriptionId"),
    Case("workspace as a string", lambda w: by_name(w, workspace=w.name), "spec.workspace"),
    Case("no batchAccount", lambda w: {"workspace": w.ref}, "spec.batchAccount"),
    Case("computeName with '/..'", lambda w: by_name(w, computeName="ab/../cd"),
         "spec.computeName"),
    Case("computeName with a Cyrillic a", lambda w: by_name(w, computeName=f"b{CYR_A}tch"),
         "spec.computeName"),
    Case("computeName with a trailing newline", lambda w: by_name(w, computeName="batch\n"),
         "spec.computeName"),
    Case("computeName of 25", lambda w: by_name(w, computeName="c" * 25), "spec.computeName"),
    Case("computeName as a list", lambda w: by_name(w, computeName=["batch"]),
         "spec.computeName"),
    Case("resourceId of 8 parts", lambda w: by_id(w, w.account_id().rsplit("/", 1)[0]),
         "spec.batchAccount.resourceId"),
    Case("resourceId of 10 parts", lambda w: by_id(w, w.account_id() + "/x"),
         "spec.batchAccount.resourceId"),
    Case("resourceId with '/../'",
         lambda w: by_id(w, w.account_id().replace("/providers/", "/x/../providers/")),
         "spec.batchAccount.resourceId"),
    Case("resourceId of another provider",
         lambda w: by_id(w, w.account_id().replace("Microsoft.Batch", "Microsoft.Storage")),
         "spec.batchAccount.resourceId"),
    Case("resourceId with %2F", lambda w: by_id(w, w.account_id().replace(
        "/batchAccounts/", "/batchAccounts%2F")), "spec.batchAccount.resourceId"),
    Case("resourceId with a query", lambda w: by_id(w, w.account_id() + "?api-version=1"),
         "spec.batchAccount.resourceId"),
    Case("resourceId with a dotless i",
         lambda w: by_id(w, w.account_id().replace("/subscriptions/", "/subscr\u0131ptions/")),
         "spec.batchAccount.resourceId"),
    Case("accountName with a Cyrillic a",
         lambda w: account_with(w, resourceGroup=w.batch_resource_group,
                                accountName=w.account + CYR_A),
         "spec.batchAccount.accountName"),
    Case("accountName with %2F",
         lambda w: account_with(w, resourceGroup=w.batch_resource_group, accountName="a%2Fb"),
         "spec.batchAccount.accountName"),
    Case("batch group '..'",
         lambda w: account_with(w, resourceGroup="..", accountName=w.account),
         "spec.batchAccount.resourceGroup"),
    Case("description of 1025", lambda w: by_name(w, description="d" * 1025),
         "spec.description"),
    Case("51 tags", lambda w: by_name(w, tags={f"k{i}": "v" for i in range(51)}), "spec.tags"),
    Case("tag value of 257", lambda w: by_name(w, tags={"team": "v" * 257}), "spec.tags"),
    Case("tag value as a number", lambda w: by_name(w, tags={"team": 1}), "spec.tags"),
    Case("deletionPolicy Delete", lambda w: by_name(w, deletionPolicy="Delete"),
         "spec.deletionPolicy"),
    Case("Secret name with '/..'",
         lambda w: by_name(w, credentials={"secretRef": {"name": "../azure-identity"}}),
         "spec.credentials.secretRef.name"),
]

# These pass the v1.20 schema; the operator must refuse them before any ARM call. (A cluster
# that evaluates CEL refuses the two-form and no-form ones itself; either answer is fine.)
OPERATOR_CASES = [
    Case("both forms",
         lambda w: {"workspace": w.ref, "batchAccount": {
             "resourceId": w.account_id(), "resourceGroup": w.batch_resource_group,
             "accountName": w.account}}, "batchAccount.resourceId"),
    Case("resourceId and accountName",
         lambda w: {"workspace": w.ref, "batchAccount": {
             "resourceId": w.account_id(), "accountName": w.account}},
         "batchAccount.accountName"),
    Case("neither form", lambda w: account_with(w), "batchAccount.resourceGroup"),
    Case("group without account", lambda w: account_with(w, resourceGroup="batch-rg"),
         "batchAccount.accountName"),
    Case("owner tag", lambda w: by_name(w, tags={"batchcompute-operator.owner": "other/x"}),
         "batchcompute-operator.owner"),
    Case("owner uid tag, other case",
         lambda w: by_name(w, tags={"BatchCompute-Operator.Owner-UID": "0000"}),
         "BatchCompute-Operator.Owner-UID"),
    Case("owner prefix only", lambda w: by_name(w, tags={"batchcompute-operator.": "x"}),
         "tag name"),
    Case("tag name with '/'", lambda w: by_name(w, tags={"team/ml": "x"}), "tag name"),
    Case("tag name with %2F", lambda w: by_name(w, tags={"team%2Fml": "x"}), "tag name"),
    Case("tag name with '%'", lambda w: by_name(w, tags={"100%": "x"}), "tag name"),
    Case("tag name with '?'", lambda w: by_name(w, tags={"a?b": "x"}), "tag name"),
    Case("tag name with '<>'", lambda w: by_name(w, tags={"<script>": "x"}), "tag name"),
    Case("tag name with '&'", lambda w: by_name(w, tags={"a&b": "x"}), "tag name"),
    Case("tag name with a backslash", lambda w: by_name(w, tags={"a\\b": "x"}), "tag name"),
    Case("tag name of 513", lambda w: by_name(w, tags={"k" * 513: "x"}), "tag name"),
    Case("Secret of another namespace", lambda w: by_name(w, credentials={
        "secretRef": {"name": "azure-identity", "namespace": "kube-system"}}),
         "credentials.secretRef.namespace"),
    Case("resource name with a dot as the compute name", by_name, "computeName",
         name="my.batch"),
    Case("resource name starting with a digit as the compute name", by_name, "computeName",
         name="1batch"),
    Case("resource name of 25 as the compute name", by_name, "computeName", name="c" * 25),
    Case("resource name of 2 as the compute name", by_name, "computeName", name="ab"),
]

# RE2 folds case the Unicode way, so `(?i:subscriptions)` in the schema lets a LONG S through.
# The operator compares the fixed segments exactly (ignoring ASCII case only) and must refuse.
LOOKALIKE_ID_CASES = [
    Case("LONG S in 'subscriptions'",
         lambda w: by_id(w, w.account_id().replace("/subscriptions/", f"/{LONG_S}ubscriptions/")),
         "batchAccount.resourceId"),
    Case("LONG S in 'resourceGroups'",
         lambda w: by_id(w, w.account_id().replace("/resourceGroups/", f"/re{LONG_S}ourceGroups/")),
         "batchAccount.resourceId"),
    Case("LONG S in 'Microsoft.Batch'",
         lambda w: by_id(w, w.account_id().replace("Microsoft.Batch", f"Micro{LONG_S}oft.Batch")),
         "batchAccount.resourceId"),
    Case("LONG S in 'batchAccounts'",
         lambda w: by_id(w, w.account_id().replace("/batchAccounts/", f"/batchAccount{LONG_S}/")),
         "batchAccount.resourceId"),
]
HOSTILE_INPUTS = len(SCHEMA_CASES) + len(OPERATOR_CASES) + len(LOOKALIKE_ID_CASES)


def resource_name(case: Case, n: int) -> str:
    return case.name or f"hostile-{n}"


def refuse_all(cases: list[Case], attachments: Attachments, workspace: Workspace,
               emulator: Any) -> tuple[list[str], dict[str, str]]:
    """Create each case and check how it was refused: returns the problems found and, per case,
    which layer refused it ("api" or "operator"). Asserts zero ARM calls for the whole batch."""
    seq = last_seq(emulator)
    problems: list[str] = []
    refused_by: dict[str, str] = {}
    created: dict[str, Case] = {}
    for n, case in enumerate(cases):
        name = resource_name(case, n)
        try:
            attachments.create(name, case.build(workspace))
        except ApiException as exc:
            refused_by[case.label] = "api"
            if exc.status != 422:
                problems.append(f"{case.label}: API server answered {exc.status}, not 422")
            elif case.field.split(".")[-1] not in str(exc.body):
                problems.append(f"{case.label}: the 422 does not name {case.field}: {exc.body}")
            continue
        created[name] = case
    for name, case in created.items():
        refused_by[case.label] = "operator"
        try:
            attachments.wait_condition(name, "False", reason="InvalidSpec", timeout=30)
        except AssertionError:
            problems.append(f"{case.label}: not InvalidSpec: {attachments.condition(name)}")
            continue
        ready = attachments.condition(name)
        stalled = attachments.condition(name, "Stalled")
        if case.field not in ready.get("message", ""):
            problems.append(f"{case.label}: the message does not name {case.field}: "
                            f"{ready.get('message')!r}")
        if stalled.get("status") != "True":
            problems.append(f"{case.label}: Stalled is {stalled.get('status')}, not True")
        obj = attachments.get(name) or {}
        errors = obj.get("status", {}).get("provisioningErrors") or [{}]
        if errors[0].get("code") != "InvalidSpec":
            problems.append(f"{case.label}: provisioningErrors {errors}")
        def has_event(name: str = name) -> bool:
            return "InvalidSpec" in attachments.reasons(name)

        try:
            wait_for(has_event, timeout=15)
        except AssertionError:
            problems.append(f"{case.label}: no InvalidSpec event: {attachments.events(name)}")
    calls = Workspace.calls(emulator, seq)
    assert calls == [], f"hostile specs reached ARM: {calls}"
    # Deleting them needs no ARM call either: nothing was ever attached.
    for name in created:
        attachments.delete(name)
    for name in created:
        attachments.wait_gone(name)
    assert Workspace.calls(emulator, seq) == [], "deleting the refused resources called ARM"
    return problems, refused_by


@pytest.mark.parametrize("case", SCHEMA_CASES, ids=[c.label for c in SCHEMA_CASES])
def test_the_schema_refuses_hostile_specs(installed: Any, attachments: Attachments,
                                          workspace: Workspace, case: Case) -> None:
    with pytest.raises(ApiException) as err:
        attachments.create("hostile", case.build(workspace))
    assert err.value.status == 422
    body = json.loads(err.value.body or "{}")
    assert case.field in body["message"], body["message"]


def test_hostile_specs_past_the_schema_are_refused_before_any_arm_call(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    start_operator()
    problems, refused_by = refuse_all(OPERATOR_CASES, attachments, workspace, emulator)
    print(f"{len(refused_by)} hostile specs: "
          f"{sum(v == 'api' for v in refused_by.values())} refused by the API server, "
          f"{sum(v == 'operator' for v in refused_by.values())} by the operator")
    assert problems == []


def test_lookalike_letters_in_a_resource_id_are_refused_naming_the_field(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """The schema lets these through (RE2 case folding); the operator must not."""
    for case in LOOKALIKE_ID_CASES:
        spec = case.build(workspace)
        assert LONG_S in spec["batchAccount"]["resourceId"]
    start_operator()
    problems, _ = refuse_all(LOOKALIKE_ID_CASES, attachments, workspace, emulator)
    assert problems == []


def test_a_resource_id_differing_only_in_case_is_the_same_account(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """ARM ids are case-insensitive: an id in other cases names the same account and attaches."""
    rid = (f"/SUBSCRIPTIONS/{workspace.subscription.upper()}/resourcegroups/"
           f"{workspace.batch_resource_group.upper()}/Providers/MICROSOFT.BATCH/BatchAccounts/"
           f"{workspace.account}")
    seq = last_seq(emulator)
    start_operator()
    attachments.create("cased", by_id(workspace, rid))
    obj = attachments.wait_condition("cased", "True", reason="Attached")
    assert obj["status"]["clusterResourceId"].lower() == workspace.account_id().lower()
    puts = [c for c in writes(Workspace.calls(emulator, seq)) if c["method"] == "PUT"]
    assert len(puts) == 1
    assert puts[0]["path"].endswith("/computes/cased")


# -- ARM-side garbage --------------------------------------------------------------------------

def admin(emulator: Any) -> httpx.Client:
    base = emulator.admin_url.rstrip("/").removesuffix("/_admin")
    tls = ssl.create_default_context(cafile=emulator.ca_file)
    return httpx.Client(base_url=base, verify=tls, timeout=10.0)


def plant(emulator: Any, ws: Workspace, name: str, compute: dict[str, Any]) -> dict[str, Any]:
    """Put a compute in the workspace out of band (replacing one of that name)."""
    with admin(emulator) as client:
        resp = client.put(f"/_admin/computes/{ws.subscription}/{ws.resource_group}/{ws.name}/"
                          f"{name}", json=compute)
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


def aks_id(ws: Workspace) -> str:
    return (f"/subscriptions/{ws.subscription}/resourceGroups/{ws.resource_group}"
            "/providers/Microsoft.ContainerService/managedClusters/aks-prod")


def test_a_planted_compute_of_another_type_is_a_conflict_and_never_written(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    plant(emulator, workspace, "shared", {"properties": {
        "computeType": "AKS", "resourceId": aks_id(workspace), "description": "prod cluster"}})
    seq = last_seq(emulator)
    start_operator()
    attachments.create("shared", by_name(workspace))
    attachments.wait_condition("shared", "False", reason="Conflict")
    message = attachments.condition("shared", "Stalled")["message"]
    assert "AKS" in message
    assert "aks-prod" in message
    wait_for(lambda: "Conflict" in attachments.reasons("shared"), message="Conflict event")
    attachments.delete("shared")
    attachments.wait_gone("shared")
    assert writes(Workspace.calls(emulator, seq)) == []
    left = workspace.computes(emulator)["shared"]
    assert left["properties"]["computeType"] == "AKS"
    assert left["properties"]["resourceId"] == aks_id(workspace)
    assert not left.get("tags")


def test_a_compute_replaced_by_another_type_keeping_our_tags_is_not_detached(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """Out of band, our Batch attachment is swapped for an AKS compute that kept its tags (so it
    claims our ownership). The operator only ever attached a Batch account: it reports the
    conflict and, when the resource is deleted, leaves the AKS compute attached."""
    start_operator()
    attachments.create("swapped", by_name(workspace))
    attachments.wait_condition("swapped", "True", reason="Attached")
    tags = workspace.computes(emulator)["swapped"]["tags"]
    assert tags["batchcompute-operator.owner"] == f"{attachments.namespace}/swapped"
    seq = last_seq(emulator)
    plant(emulator, workspace, "swapped", {"tags": tags, "properties": {
        "computeType": "AKS", "resourceId": aks_id(workspace)}})
    attachments.wait_condition("swapped", "False", reason="Conflict", timeout=30)
    assert writes(Workspace.calls(emulator, seq)) == []
    attachments.delete("swapped")
    attachments.wait_gone("swapped")
    sent = [f"{c['method']} {c['path']} {c['query']} -> {c['status']}"
            for c in writes(Workspace.calls(emulator, seq))]
    left = workspace.computes(emulator).get("swapped")
    assert sent == [], f"sent {sent}; the AKS compute is now {left}"
    assert left is not None
    assert left["properties"]["computeType"] == "AKS"


def test_a_list_answering_html_is_retried_and_the_operator_survives(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    list_path = (f"/resourceGroups/{workspace.resource_group}/providers/"
                 f"Microsoft.MachineLearningServices/workspaces/{workspace.name}/computes/?$")
    fault = emulator.add_fault({"kind": "list", "path_regex": list_path, "count": 2,
                                "action": {"status": 200, "raw": "<html><body>Oops</body></html>"}})
    try:
        seq = last_seq(emulator)
        operator = start_operator()
        attachments.create("garbled", by_name(workspace))
        wait_for(lambda: "Retrying" in attachments.reasons("garbled"), timeout=30,
                 message="Retrying event")
        attachments.wait_condition("garbled", "True", reason="Attached", timeout=45)
        remaining = [f for f in admin_faults(emulator) if f["id"] == fault["id"]]
        assert remaining == [], f"the fault was not used up: {remaining}"
        calls = Workspace.calls(emulator, seq)
        garbled = [c for c in calls if c.get("fault") == "status"]
        assert len(garbled) == 2, garbled
        assert len([c for c in writes(calls) if c["method"] == "PUT"]) == 1
        retrying = [m for _, reason, m in attachments.events("garbled") if reason == "Retrying"]
        assert any("InvalidListResponse" in m for m in retrying), retrying
        assert operator.proc is not None
        assert operator.proc.poll() is None, "the operator exited"
        assert "Traceback" not in operator.log()
    finally:
        emulator.clear_faults()


def admin_faults(emulator: Any) -> list[dict[str, Any]]:
    with admin(emulator) as client:
        resp = client.get("/_admin/faults")
    assert resp.status_code == 200, resp.text
    result: list[dict[str, Any]] = resp.json()
    return result
