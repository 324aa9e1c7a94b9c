"""Two operator replicas with kopf peering (the HA overlay): one acts, the other stands by and
takes over when the active one dies.

In the tests the operator serves named namespaces (BCO_NAMESPACES), and kopf then peers
through the namespaced KopfPeering kind in each served namespace, not through the
ClusterKopfPeering that deploy/overlays/ha ships for the cluster-wide install. The fixture
therefore installs the peering CRDs (deploy/kopf-peering), and derives the namespaced peering
object and its Role/RoleBinding from the overlay's peering.yaml and peering_role.yaml (same
name, same verbs, namespaced kind), applied with the admin kubeconfig. The cluster-scoped
RBAC is not applied: the namespaced operator never uses it, and it would widen what the
operator identity may do for the rest of the session.

A SIGKILLed peer cannot withdraw its keep-alive, so the survivor resumes only when that
record expires: the peering lifetime (BCO_PEERING_LIFETIME, 15 s here, 60 s by default) after
the dead peer's last keep-alive. The take-over is therefore allowed up to 45 s.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_proc import Attachments, OperatorProcess, Workspace
from waiting import wait_for

HA = Path(__file__).resolve().parents[2] / "deploy" / "overlays" / "ha"
PEERING_CRDS_FILE = HA.parents[1] / "kopf-peering" / "crds.yaml"  # make peering-crds
PEERING_CRDS = ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
TAKEOVER_LIMIT = 45.0
LIFETIME = 15


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), *args], input=stdin,
                            capture_output=True, text=True, timeout=120, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def peering_name() -> str:
    """BCO_PEERING as the overlay merges it into the generated settings ConfigMap."""
    (kustomization,) = load(HA / "kustomization.yaml")
    literals = [lit for gen in kustomization["configMapGenerator"] for lit in gen["literals"]]
    settings = dict(lit.split("=", 1) for lit in literals)
    return settings["BCO_PEERING"]


def namespaced_peering_objects(namespace: str) -> list[dict[str, Any]]:
    """The overlay's peering object and RBAC, as a namespaced operator needs them."""
    objects: list[dict[str, Any]] = []
    for doc in load(HA / "peering.yaml") + load(HA / "peering_role.yaml"):
        obj = copy.deepcopy(doc)
        obj["metadata"]["namespace"] = namespace
        if obj["kind"] == "ClusterKopfPeering":
            obj["kind"] = "KopfPeering"
        elif obj["kind"] == "ClusterRole":
            obj["kind"] = "Role"
            for rule in obj["rules"]:
                rule["resources"] = ["kopfpeerings" if r == "clusterkopfpeerings" else r
                                     for r in rule["resources"]]
        elif obj["kind"] == "ClusterRoleBinding":
            obj["kind"] = "RoleBinding"
            obj["roleRef"]["kind"] = "Role"
        else:
            raise AssertionError(f"unexpected object in the HA overlay: {obj['kind']}")
        objects.append(obj)
    return objects


@pytest.fixture
def peering(installed: Any, namespace: str) -> Iterator[str]:
    """The peering CRDs (removed afterwards if this fixture created them) and the namespaced
    peering object + RBAC in the test's namespace. Returns the peering name."""
    admin = installed.kubeconfig
    existing = {name for name in PEERING_CRDS
                if kubectl(admin, "get", "crd", name, check=False).returncode == 0}
    kubectl(admin, "apply", "--validate=false", "-f", str(PEERING_CRDS_FILE))
    for name in PEERING_CRDS:
        kubectl(admin, "wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
    objects = namespaced_peering_objects(namespace)
    kubectl(admin, "apply", "--validate=false", "-f", "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    try:
        yield peering_name()
    finally:
        # The operators are stopped by then (start_operator is set up after this fixture).
        for name in PEERING_CRDS:
            if name not in existing:
                kubectl(admin, "delete", "crd", name, "--wait=true", check=False)


def peers(kubeconfig: Path, namespace: str, name: str) -> dict[str, dict[str, Any]]:
    """The keep-alive records in the peering object's status, by peer identity."""
    result = kubectl(kubeconfig, "-n", namespace, "get", "kopfpeering", name, "-o", "json")
    status: dict[str, dict[str, Any]] = json.loads(result.stdout).get("status") or {}
    return status


def paused(proc: OperatorProcess) -> bool:
    """kopf starts a mandatory peering paused and logs each later pause and resume."""
    log = proc.log()
    resumed = log.rfind("Resuming operations")
    return resumed < 0 or log.rfind("Pausing operations") > resumed


def acted(proc: OperatorProcess) -> bool:
    """Whether this process wrote any status (the engine's debug log names each write)."""
    return ": wrote status " in proc.log()


def wrote_status_of(proc: OperatorProcess, name: str) -> bool:
    """Whether this process patched the status of the resource `name` (its debug log)."""
    return any(f"/{name}: wrote status " in line for line in proc.log().splitlines())




def puts_for(calls: list[dict[str, Any]], ws: Workspace, name: str) -> list[dict[str, Any]]:
    path = ws.compute_path(name).lower()
    return [c for c in calls if c["method"] == "PUT" and c["path"].lower() == path]


def test_one_peer_acts_and_the_other_takes_over_after_sigkill(
        peering: str, start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any, installed: Any, namespace: str) -> None:
    mark = emulator.requests()[-1]["seq"] if emulator.requests() else 0
    env = {"BCO_PEERING": peering, "BCO_PEERING_LIFETIME": str(LIFETIME)}
    first: OperatorProcess = start_operator(POD_ID="peer-a", **env)
    wait_for(lambda: not paused(first), timeout=30, message="peer-a active while alone")
    second: OperatorProcess = start_operator(POD_ID="peer-b", **env)
    records = wait_for(lambda: (lambda p: p if {"peer-a", "peer-b"} <= set(p) else None)(
        peers(installed.kubeconfig, namespace, peering)), timeout=30,
        message="both keep-alives in the KopfPeering status")
    assert records is not None
    by_id = {"peer-a": first, "peer-b": second}
    active_id = max(by_id, key=lambda pid: int(records[pid]["priority"]))
    active = by_id[active_id]
    standby = by_id["peer-b" if active_id == "peer-a" else "peer-a"]
    # The lower priority pauses: logged if it had been active, silent if it never resumed.
    wait_for(lambda: paused(standby) and not paused(active), timeout=30,
             message=f"{active_id} active, the other paused")

    attachments.create("first", workspace.spec())
    attachments.wait_condition("first", "True", reason="Attached", timeout=30)
    assert wrote_status_of(active, "first")
    assert not acted(standby), "the paused peer wrote a status"
    assert len(puts_for(Workspace.calls(emulator, mark), workspace, "first")) == 1

    active.kill()
    killed_at = time.monotonic()
    attachments.create("second", workspace.spec())
    attachments.wait_condition("second", "True", reason="Attached", timeout=TAKEOVER_LIMIT)
    takeover = time.monotonic() - killed_at
    assert not paused(standby), "the survivor logged no resume"
    assert wrote_status_of(standby, "second")

    calls = Workspace.calls(emulator, mark)
    assert len(puts_for(calls, workspace, "first")) == 1, "the survivor re-attached 'first'"
    assert len(puts_for(calls, workspace, "second")) == 1
    assert {"first", "second"} <= set(workspace.computes(emulator))
    print(f"active: {active_id} (priority {records[active_id]['priority']}); "
          f"take-over after SIGKILL: {takeover:.1f}s")
