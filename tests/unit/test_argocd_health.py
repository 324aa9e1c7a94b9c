"""The Argo CD health check (deploy/argocd/health.lua) and kstatus, over status fixtures.

Each fixture in fixtures/statuses/ is a whole object in a state the operator's status
contract allows (README, "Status"). The Lua runs in a real Lua 5.1 runtime with Argo CD's
calling convention and sandbox (tests/gitops_health.py). The table below is the verdict
table the README's "GitOps" section promises; kstatus's verdict is checked beside it, with
the one state where kstatus cannot see the difference (no status yet reads as Current).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.gitops_health import argocd_health, health_script, kstatus, kstatus_result

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "statuses"
CRD_FILE = REPO_ROOT / "crds" / "batchcomputeattachments.yaml"
PATCH_FILE = REPO_ROOT / "deploy" / "argocd" / "argocd-cm-patch.yaml"
HEALTH_KEY = "resource.customizations.health.batchcompute.azureml.dev_BatchComputeAttachment"

WAITING_GEN_1 = "Waiting for the operator to observe the resource"
ACCOUNT = ("/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/batch-rg/providers"
           "/Microsoft.Batch/batchAccounts/mybatchacct")
ATTACHED = f"{ACCOUNT} is attached as 'mybatch'"
DETACH = f"detaching {ACCOUNT} from workspace compute 'mybatch'"
RBAC_DETACH = ("The operator's identity may not delete computes in workspace ml-ws: assign it "
               "the role AzureML Compute Operator on the workspace, or set "
               "spec.deletionPolicy: Orphan")

# fixture -> (Argo CD status, Argo CD message (None: the Stalled condition's), kstatus).
# The fixtures of the states tests/integration/test_gitops_health.py goes through are
# recorded from the running operator there; the others are written to the same shape.
VERDICTS: dict[str, tuple[str, str | None, str]] = {
    # create -> Ready
    "created-no-status": ("Progressing", WAITING_GEN_1, "Current"),
    "observed-before-arm": ("Progressing", f"attaching {ACCOUNT} as 'mybatch' in workspace "
                            "'ml-ws'", "InProgress"),
    "throttled": ("Progressing", "ARM throttled the subscription (SubscriptionRequestsThrottled); "
                  "retrying in 17 s as told by Retry-After", "InProgress"),
    "retrying": ("Progressing", "The workspace API answered 503 ServiceUnavailable; retrying in "
                 "10 s", "InProgress"),
    "attached": ("Healthy", ATTACHED, "Current"),
    # a human is needed
    "stalled-authorization-failed": ("Degraded", None, "Failed"),
    "stalled-resource-not-found": ("Degraded", None, "Failed"),
    "stalled-conflict": ("Degraded", None, "Failed"),
    "stalled-invalid-spec": ("Degraded", None, "Failed"),
    "stalled-workspace-not-allowed": ("Degraded", None, "Failed"),
    "stalled-credentials-unavailable": ("Degraded", None, "Failed"),
    # a spec edit: tags (edited-*), or another Batch account
    "edited-not-yet-observed": ("Progressing", "Waiting for the operator to observe generation 2 "
                                "(status describes generation 1)", "InProgress"),
    "edited-updating": ("Progressing", "bringing 'mybatch' in workspace 'ml-ws' to the current "
                        "spec", "InProgress"),
    "edited-detaching-old-account": ("Progressing", "Detaching Batch account mybatchacct before "
                                     "attaching otherbatchacct", "InProgress"),
    "edited-attached": ("Healthy", ATTACHED, "Current"),
    # deletion (the API server bumps metadata.generation when it sets deletionTimestamp)
    "deleting-not-yet-observed": ("Progressing", "Being deleted: waiting for the operator to "
                                  "detach the compute and remove its finalizer", "Terminating"),
    "deleting-detaching": ("Progressing", f"Being deleted: {DETACH}", "Terminating"),
    "deleting-detach-failed": ("Progressing", f"Being deleted, detach blocked: {RBAC_DETACH}",
                               "Terminating"),
}


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in obj["status"]["conditions"] if c["type"] == type_]
    assert len(found) == 1
    return found[0]


def test_every_fixture_has_a_verdict() -> None:
    assert sorted(p.stem for p in FIXTURES.glob("*.json")) == sorted(VERDICTS)


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_argocd_verdict(name: str) -> None:
    status, message, _ = VERDICTS[name]
    obj = load(name)
    if message is None:
        message = condition(obj, "Stalled")["message"]
    assert argocd_health(obj) == (status, message)


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_kstatus_verdict(name: str) -> None:
    assert kstatus(load(name)) == VERDICTS[name][2]


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_argocd_and_kstatus_agree(name: str) -> None:
    """Healthy exactly when kstatus says Current, Degraded exactly when it says Failed; the
    exceptions are the ones kstatus documents: no status at all reads as Current, and a
    resource being deleted is Terminating (Argo CD: Progressing)."""
    argo, _ = argocd_health(load(name))
    ks = kstatus(load(name))
    expected = {"Current": "Healthy", "Failed": "Degraded", "InProgress": "Progressing",
                "Terminating": "Progressing"}[ks]
    if name == "created-no-status":
        assert (ks, argo) == ("Current", "Progressing")
    else:
        assert argo == expected


def test_kstatus_messages() -> None:
    assert kstatus_result(load("edited-not-yet-observed")) == (
        "InProgress",
        "BatchComputeAttachment generation is 2, but latest observed generation is 1")
    assert kstatus_result(load("deleting-detaching")) == (
        "Terminating", "Resource scheduled for deletion")
    failed = load("stalled-conflict")
    assert kstatus_result(failed) == ("Failed", condition(failed, "Stalled")["message"])


def test_kstatus_takes_the_first_abnormal_condition_in_list_order() -> None:
    obj = load("stalled-conflict")
    for cond in obj["status"]["conditions"]:
        cond["status"] = "True" if cond["type"] != "Ready" else "False"
    assert kstatus(obj) == "InProgress"  # Reconciling is listed before Stalled
    obj["status"]["conditions"].reverse()
    assert kstatus(obj) == "Failed"


def test_stalled_wins_over_reconciling_whatever_the_order() -> None:
    obj = load("stalled-conflict")
    for cond in obj["status"]["conditions"]:
        cond["status"] = "True" if cond["type"] != "Ready" else "False"
    for _ in range(2):
        assert argocd_health(obj)[0] == "Degraded"
        obj["status"]["conditions"].reverse()


def test_a_condition_older_than_the_generation_is_not_trusted() -> None:
    """Ready=True computed for generation 1 says nothing about generation 2, even if
    status.observedGeneration has moved on."""
    obj = load("edited-not-yet-observed")
    obj["status"]["observedGeneration"] = 2
    assert argocd_health(obj) == ("Progressing", "Waiting for the operator to report Ready")
    stalled = load("stalled-conflict")
    stalled["metadata"]["generation"] = 2
    stalled["status"]["observedGeneration"] = 2
    assert argocd_health(stalled)[0] == "Progressing"


def test_ready_true_without_a_current_observed_generation_is_progressing() -> None:
    obj = load("attached")
    del obj["status"]["observedGeneration"]
    assert argocd_health(obj) == ("Progressing", WAITING_GEN_1)
    assert kstatus(obj) == "Current"  # kstatus trusts Ready when observedGeneration is absent


def test_status_without_conditions_is_progressing() -> None:
    obj = load("attached")
    del obj["status"]["conditions"]
    assert argocd_health(obj) == ("Progressing", "Waiting for the operator to report Ready")


def test_empty_message_falls_back_to_the_reason() -> None:
    obj = load("stalled-conflict")
    for cond in obj["status"]["conditions"]:
        cond["message"] = ""
    assert argocd_health(obj) == ("Degraded", "Conflict")


def test_the_script_needs_no_library_argo_cd_withholds() -> None:
    """The sandbox is real: a script that reaches for `string` or a string method fails."""
    probe = 'return {status = "Healthy", message = string.format("%d", 1)}'
    with pytest.raises(Exception, match="string"):
        argocd_health(load("attached"), probe)
    with pytest.raises(Exception, match="index"):
        argocd_health(load("attached"), 'return {status = "Healthy", message = ("x"):upper()}')


def test_an_invalid_status_reads_as_unknown() -> None:
    assert argocd_health(load("attached"), 'return {status = "Fine"}') == (
        "Unknown", "Lua returned an invalid health status")


def test_argocd_cm_patch_installs_exactly_health_lua() -> None:
    patch = yaml.safe_load(PATCH_FILE.read_text())
    assert (patch["apiVersion"], patch["kind"]) == ("v1", "ConfigMap")
    assert (patch["metadata"]["name"], patch["metadata"]["namespace"]) == ("argocd-cm", "argocd")
    assert set(patch["data"]) == {HEALTH_KEY}
    assert patch["data"][HEALTH_KEY] == health_script(), (
        "deploy/argocd/argocd-cm-patch.yaml must carry deploy/argocd/health.lua verbatim")


def kustomize_version(kubectl: str) -> tuple[int, int]:
    """The kustomize built into kubectl ((0, 0) when kubectl does not say: before 1.24)."""
    shown = subprocess.run([kubectl, "version", "--client", "-o", "json"],
                           capture_output=True, text=True, timeout=60, check=False).stdout
    try:
        version = str(json.loads(shown).get("kustomizeVersion", ""))
    except ValueError:
        version = ""
    found = re.match(r"v(\d+)\.(\d+)", version)
    return (int(found[1]), int(found[2])) if found else (0, 0)


def test_the_kustomize_component_adds_the_key_and_keeps_the_others(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None or kustomize_version(kubectl) < (3, 7):
        pytest.skip("needs kubectl with kustomize v3.7+ (Components)")
    (tmp_path / "argocd-cm.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "argocd-cm", "namespace": "argocd"},
        "data": {"url": "https://argocd.example.com"}}))
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": ["argocd-cm.yaml"], "components": ["argocd"]}))
    shutil.copytree(PATCH_FILE.parent, tmp_path / "argocd")
    rendered = subprocess.run([kubectl, "kustomize", str(tmp_path)],
                              check=True, capture_output=True, text=True, timeout=60).stdout
    data = yaml.safe_load(rendered)["data"]
    assert data == {"url": "https://argocd.example.com", HEALTH_KEY: health_script()}


# -- the fixtures keep to the CRD's status schema ----------------------------------------


@cache
def status_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_FILE.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    return schema


JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "integer": (int,),
    "boolean": (bool,), "number": (int, float),
}


def schema_errors(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    if value is None:
        return [] if schema.get("nullable") else [f"{path}: null"]
    kind = schema.get("type")
    if kind and (not isinstance(value, JSON_TYPES[kind])
                 or (kind == "integer" and isinstance(value, bool))):
        return [f"{path}: not {kind}"]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if kind == "object" and not schema.get("x-kubernetes-preserve-unknown-fields"):
        props = schema.get("properties", {})
        errors += [f"{path}.{key}: unknown field" for key in value if key not in props]
        errors += [f"{path}.{key}: required" for key in schema.get("required", ())
                   if key not in value]
        for key, item in value.items():
            if key in props:
                errors += schema_errors(item, props[key], f"{path}.{key}")
    if kind == "array":
        for index, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{path}[{index}]")
    return errors


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_fixture_status_fits_the_crd(name: str) -> None:
    obj = load(name)
    assert schema_errors(obj.get("status", {}), status_schema(), "status") == []
    for cond in obj.get("status", {}).get("conditions", ()):
        assert cond["observedGeneration"] <= obj["metadata"]["generation"]


def test_schema_check_catches_a_wrong_status() -> None:
    obj = copy.deepcopy(load("observed-before-arm"))
    obj["status"]["operation"]["kind"] = "Delete"
    obj["status"]["ready"] = True
    assert schema_errors(obj["status"], status_schema(), "status") == [
        "status.ready: unknown field",
        "status.operation.kind: 'Delete' not in ['Attach', 'Detach']"]
