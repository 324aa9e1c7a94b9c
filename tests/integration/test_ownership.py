"""Who owns a workspace compute: races for one name, re-creation after an orphaning delete,
and the tag budget ARM allows (issue 15, items 1, 3 and 4).

The README promises that another owner's compute is never overwritten. These tests check it
where it is hardest to keep: many resources, in several namespaces, asking for the same
compute name at the same moment; a resource re-created under the same namespace/name (a
GitOps re-create, a restore: a new UID) finding the compute its predecessor left; and a
resource whose tags and the operator's own two would exceed ARM's 50.

What counts is what a user and ARM see: conditions, events, the COMPUTE column of `kubectl
get bca`, the compute's owner tags, and every PUT in the emulator's request log.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from observing import brief, conditions, kubectl_get_bca, last_seq, writes_to
from operator_proc import Attachments, OperatorProcess, Operators, Workspace, failed
from waiting import wait_for

from batchcompute_operator.spec import SpecError, parse_spec

OWNER_TAG = "batchcompute-operator.owner"
OWNER_UID_TAG = "batchcompute-operator.owner-uid"


# -- helpers ---------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("restore_emulator")  # it changes the shared emulator


@pytest.fixture
def more_namespaces(kube: ApiClient) -> Iterator[Callable[[int], list[str]]]:
    """Creates extra namespaces for one test; their deletion is requested afterwards."""
    core = kubernetes.client.CoreV1Api(kube)
    made: list[str] = []

    def make(count: int) -> list[str]:
        names = [f"t-own-{secrets.token_hex(3)}" for _ in range(count)]
        for name in names:
            core.create_namespace({"metadata": {"name": name, "labels": {
                "batchcompute.testbed/test-namespace": "true"}}})
            made.append(name)
        return names

    yield make
    for name in made:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture
def operator_for(installed: Any, emulator: Any, tmp_path: Path,
                 request: pytest.FixtureRequest) -> Iterator[Callable[..., OperatorProcess]]:
    """One operator process watching the namespaces given (the `start_operator` fixture
    watches only the test's own namespace)."""
    operators = Operators(installed.operator_kubeconfig or installed.kubeconfig, emulator,
                          tmp_path)

    def start(namespaces: list[str], **env: str) -> OperatorProcess:
        return operators.start(namespaces, **env)

    yield start
    operators.finish(failed(request))


def lists_of(emulator: Any, since: int, ws: Workspace) -> list[dict[str, Any]]:
    """The workspace's compute LISTs answered 200 since `since`."""
    path = ws.compute_path("").lower().rstrip("/")
    return [c for c in emulator.requests(since)
            if c["method"] == "GET" and c["path"].lower() == path and c["status"] == 200]


# -- item 1: many resources, one compute name ---------------------------------------------------


SHARED = "shared-name"


@pytest.mark.parametrize(("racers", "staggered"), [(2, True), (2, False), (5, False),
                                                     (20, False)],
                         ids=["2-staggered", "2", "5", "20"])
def test_resources_racing_for_one_compute_name_leave_one_owner_and_no_overwrite(
        racers: int, staggered: bool, operator_for: Callable[..., OperatorProcess],
        more_namespaces: Callable[[int], list[str]], kube: ApiClient, installed: Any,
        workspace: Workspace, emulator: Any) -> None:
    """Issue 15, item 1. Resources in several namespaces (the same names recurring across
    them) ask for one compute name in one workspace. Exactly one becomes its owner, with
    exactly one PUT (201) in ARM; nobody's PUT lands on a compute another resource created;
    every other resource is Stalled with reason Conflict naming the owner, and `kubectl get
    bca` shows the requested name for all of them.

    `2-staggered` is the issue's reproduction: the second resource is applied while the
    first one's attach is running (right after its PUT, within the age of the LIST the
    first decided from); the others apply all resources at the same moment."""
    emulator.set_config({"operation_seconds": 0.2})
    spaces = more_namespaces(min(racers, 5))
    who = [(spaces[i % len(spaces)], f"dup{i // len(spaces)}") for i in range(racers)]
    clients = {ns: Attachments(kube, ns) for ns in spaces}
    mark = last_seq(emulator)
    # Resync every second: the LISTs after the race (see below) come sooner.
    operator_for(spaces, BCO_RESYNC_INTERVAL="1")

    def create(target: tuple[str, str]) -> dict[str, Any]:
        ns, name = target
        return clients[ns].create(name, workspace.spec(computeName=SHARED))

    if staggered:
        create(who[0])
        wait_for(lambda: writes_to(emulator, mark, workspace, SHARED), timeout=20,
                 message="the first resource's PUT")
        create(who[1])
    else:
        barrier = threading.Barrier(racers)

        def at_once(target: tuple[str, str]) -> dict[str, Any]:
            barrier.wait(timeout=30)
            return create(target)

        with ThreadPoolExecutor(racers) as pool:
            list(pool.map(at_once, who))

    def settled() -> tuple[list[tuple[str, str]], list[tuple[str, str]]] | None:
        ready, conflicted = [], []
        for ns, name in who:
            conds = conditions(clients[ns].get(name))
            if conds.get("Ready", {}).get("status") == "True":
                ready.append((ns, name))
            elif conds.get("Stalled", {}).get("status") == "True" and \
                    conds["Stalled"].get("reason") == "Conflict":
                conflicted.append((ns, name))
        return (ready, conflicted) if len(ready) + len(conflicted) == racers else None

    found = wait_for(settled, timeout=30 + racers, interval=0.3,
                     message="every racer Ready or Stalled with Conflict")
    ready, conflicted = found
    settle_mark = last_seq(emulator)
    # Two more LISTs of the workspace, so that every resource has decided again from a LIST
    # taken after all of this: a late overwrite would show up now.
    wait_for(lambda: len(lists_of(emulator, settle_mark, workspace)) >= 2, timeout=20,
             message="two LISTs after the race settled")

    puts = writes_to(emulator, mark, workspace, SHARED)
    assert len(ready) == 1, f"owners: {ready}; PUTs: {brief(puts)}"
    owner_ns, owner_name = ready[0]
    owner = clients[owner_ns].get(owner_name)
    assert owner is not None
    # Zero overwrites: one PUT, the one that created the compute.
    assert [c["status"] for c in puts] == [201], brief(puts)
    assert writes_to(emulator, mark, workspace, SHARED, "DELETE") == []
    compute = workspace.computes(emulator)[SHARED]
    assert compute["tags"][OWNER_TAG] == f"{owner_ns}/{owner_name}"
    assert compute["tags"][OWNER_UID_TAG] == owner["metadata"]["uid"]
    assert puts[0]["body"]["tags"][OWNER_UID_TAG] == owner["metadata"]["uid"]
    if staggered:
        assert ready[0] == who[0], "the resource applied first lost its compute"

    owner_reasons = clients[owner_ns].reasons(owner_name)
    assert owner_reasons.count("Attaching") == 1 and owner_reasons.count("Attached") == 1, \
        owner_reasons
    for ns, name in conflicted:
        stalled = conditions(clients[ns].get(name))["Stalled"]
        assert f"{owner_ns}/{owner_name}" in stalled["message"], stalled
        reasons = clients[ns].reasons(name)
        assert "Conflict" in reasons, reasons
        assert not {"Attaching", "Attached", "Adopting"} & set(reasons), reasons
    for ns in spaces:
        rows = kubectl_get_bca(installed.kubeconfig, ns)
        assert {row["COMPUTE"] for row in rows.values()} == {SHARED}, rows
    loser_ns, loser = conflicted[0]
    said = conditions(clients[loser_ns].get(loser))["Stalled"]["message"]
    print(f"{racers} racers: owner {owner_ns}/{owner_name}, PUTs {brief(puts)}; "
          f"{loser_ns}/{loser} says: {said}")


# -- item 3: orphaned, then re-created ----------------------------------------------------------


def plant(emulator: Any, ws: Workspace, name: str, compute: dict[str, Any]) -> None:
    """Put a compute in the workspace out of band (as a script or the portal would)."""
    emulator._call("PUT", f"/_admin/computes/{ws.subscription}/{ws.resource_group}/{ws.name}/"
                          f"{name}", json=compute)


def test_orphaned_then_re_created_resource_adopts_its_compute_with_one_put(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """Issue 15, item 3. `deletionPolicy: Orphan` leaves the compute with the owner tags of
    the deleted resource. Re-applying the same manifest (a GitOps re-create, a restore: same
    namespace/name, new UID) adopts it: one PUT that re-tags it, an `Adopting` event naming
    the earlier UID, then Ready. No Conflict on the way."""
    start_operator()
    manifest = workspace.spec(deletionPolicy="Orphan", tags={"team": "ml"})
    first = attachments.create("h-orphan", manifest)["metadata"]["uid"]
    attachments.wait_condition("h-orphan", "True", reason="Attached")
    attachments.delete("h-orphan")
    attachments.wait_gone("h-orphan")
    left = workspace.computes(emulator)["h-orphan"]
    assert left["tags"][OWNER_UID_TAG] == first

    mark = last_seq(emulator)
    second = attachments.create("h-orphan", manifest)["metadata"]["uid"]
    assert second != first
    attachments.wait_condition("h-orphan", "True", reason="Attached", timeout=30)

    puts = writes_to(emulator, mark, workspace, "h-orphan")
    assert [c["status"] for c in puts] == [200], brief(puts)  # the re-tag, nothing created
    assert puts[0]["body"]["tags"] == {"team": "ml", OWNER_TAG: f"{attachments.namespace}/h-orphan",
                                       OWNER_UID_TAG: second}
    assert workspace.computes(emulator)["h-orphan"]["tags"][OWNER_UID_TAG] == second
    assert writes_to(emulator, mark, workspace, "h-orphan", "DELETE") == []
    events = [(reason, message) for _, reason, message in attachments.events("h-orphan")]
    adopting = [message for reason, message in events if reason == "Adopting"]
    assert len(adopting) == 1, events
    assert first in adopting[0] and "no longer exists" in adopting[0], adopting
    assert "Conflict" not in [reason for reason, _ in events], events
    print(f"Adopting: {adopting[0]}")


def test_compute_whose_owner_uid_still_exists_is_a_conflict_naming_the_uids(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """Issue 15, item 3, the other way. The compute's tags name this resource's
    namespace/name, but a UID that still exists in the cluster (here: another resource's,
    as tags copied by hand would be). That is not an earlier incarnation of this resource:
    Conflict, naming both UIDs, and the compute is not written."""
    start_operator()
    bystander = attachments.create("bystander", workspace.spec())["metadata"]["uid"]
    attachments.wait_condition("bystander", "True", reason="Attached")
    plant(emulator, workspace, "h-copied", {
        "location": "westeurope",
        "tags": {OWNER_TAG: f"{attachments.namespace}/h-copied", OWNER_UID_TAG: bystander},
        "properties": {"computeType": "Batch", "resourceId": workspace.account_id()}})
    mark = last_seq(emulator)
    uid = attachments.create("h-copied", workspace.spec())["metadata"]["uid"]
    attachments.wait_condition("h-copied", "True", type_="Stalled", reason="Conflict")
    message = attachments.condition("h-copied", "Stalled")["message"]
    assert bystander in message and uid in message, message
    assert writes_to(emulator, mark, workspace, "h-copied") == []
    assert workspace.computes(emulator)["h-copied"]["tags"][OWNER_UID_TAG] == bystander
    assert "Adopting" not in attachments.reasons("h-copied")
    print(f"Conflict: {message}")


# -- item 4: 48 user tags and ARM's 50 ----------------------------------------------------------


def tags(count: int) -> dict[str, str]:
    return {f"tag{i:02d}": f"value {i}" for i in range(count)}


def test_user_tags_are_capped_at_48_so_the_compute_never_exceeds_arms_50(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """Issue 15, item 4. The operator adds 2 owner tags and ARM allows 50 per resource: 49
    user tags are refused by the API server's schema and by the operator's own validation
    (for clusters where the schema is not the whole story); 48 attach, and the compute then
    carries exactly 50. The emulator refuses 51 tags the way ARM does and takes 50."""
    with pytest.raises(ApiException) as refused:
        attachments.create("many-tags", workspace.spec(tags=tags(49)))
    assert refused.value.status == 422
    assert "spec.tags" in refused.value.body and "48" in refused.value.body, refused.value.body
    with pytest.raises(SpecError) as invalid:
        parse_spec(workspace.spec(tags=tags(49)), "many-tags", attachments.namespace)
    assert "at most 48" in str(invalid.value), invalid.value
    parse_spec(workspace.spec(tags=tags(48)), "many-tags", attachments.namespace)

    mark = last_seq(emulator)
    start_operator()
    attachments.create("many-tags", workspace.spec(tags=tags(48)))
    attachments.wait_condition("many-tags", "True", reason="Attached")
    puts = writes_to(emulator, mark, workspace, "many-tags")
    assert [c["status"] for c in puts] == [201], brief(puts)
    assert len(puts[0]["body"]["tags"]) == 50
    assert len(workspace.computes(emulator)["many-tags"]["tags"]) == 50

    body = {"location": "westeurope", "properties": {
        "computeType": "Batch", "resourceId": workspace.account_id()}}
    with emulator.arm(emulator.mint_token()) as arm:
        over = arm.put(workspace.compute_path("over-limit"), params={"api-version": "2020-02-02"},
                       json={**body, "tags": tags(51)})
        at = arm.put(workspace.compute_path("at-limit"), params={"api-version": "2020-02-02"},
                     json={**body, "tags": tags(50)})
    assert over.status_code == 400, over.text
    assert over.json()["error"]["code"] == "InvalidTags", over.text
    assert "51" in over.json()["error"]["message"] and "50" in over.json()["error"]["message"]
    assert at.status_code == 201, at.text
    assert "over-limit" not in workspace.computes(emulator)
