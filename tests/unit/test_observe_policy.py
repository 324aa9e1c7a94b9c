"""managementPolicy: Observe, from plain data: status mirrors ARM, Ready says whether the compute
is attached as declared, and no decision ever writes to ARM; a deletion is released at once.

Each step is set beside what `Manage` decides from the same observation, so the difference is
what the test shows. The interop tests (tests/interop/test_sdkv1_takeover.py) count the same
promise in the emulator's request log, with SDK v1 and the running operator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from batchcompute_operator.compute import ArmErrorDetail, ComputeView
from batchcompute_operator.reconcile import (
    OWNER_TAG,
    OWNER_UID_TAG,
    Action,
    Decision,
    Observed,
    Owner,
    PutKind,
    Situation,
    acknowledge,
    decide_attach,
    decide_detach,
)
from batchcompute_operator.spec import SpecError, parse_spec
from batchcompute_operator.status import EMPTY, Recorded

REPO_ROOT = Path(__file__).resolve().parents[2]
SUB = "00000000-0000-0000-0000-000000000001"
RAW: dict[str, Any] = {
    "workspace": {"subscriptionId": SUB, "resourceGroup": "ml-rg", "name": "ml-ws"},
    "batchAccount": {"resourceGroup": "batch-rg", "accountName": "acct1"},
    "managementPolicy": "Observe",
}
OBSERVE = parse_spec(RAW, "sdk-batch")
MANAGE = parse_spec({**RAW, "managementPolicy": "Manage"}, "sdk-batch")
OWNER = Owner("team-a", "sdk-batch", "uid-1", 1)
NOW = "2026-01-01T00:00:00Z"


def compute(state: str = "Succeeded", *, account: str | None = None,
            tags: dict[str, str] | None = None, compute_type: str = "Batch",
            **extra: Any) -> ComputeView:
    """The compute as ARM lists it; by default as SDK v1 attaches it (no tags)."""
    return ComputeView(id=OBSERVE.compute_id, name="sdk-batch", compute_type=compute_type,
                       resource_id=account or OBSERVE.batch_account_id, provisioning_state=state,
                       compute_location="northeurope", location="westeurope", is_attached=True,
                       tags=tags or {}, **extra)


def decide(found: ComputeView | None, recorded: Recorded, *, observe: bool = True) -> Decision:
    spec = OBSERVE if observe else MANAGE
    return decide_attach(Situation(spec, OWNER, recorded, Observed(found), observe_only=observe))


def apply(recorded: Recorded, decision: Decision) -> Recorded:
    return recorded.updated(decision.status, decision.conditions, 1, NOW)


def conditions(decision: Decision) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in decision.conditions}


def acknowledged() -> Recorded:
    return apply(EMPTY, acknowledge(OBSERVE, EMPTY, requested_name="sdk-batch",
                                    observe_only=True))


def test_the_acknowledgement_announces_no_operation() -> None:
    decision = acknowledge(OBSERVE, EMPTY, requested_name="sdk-batch", observe_only=True)
    assert decision.action is Action.NONE
    assert decision.status is not None and decision.status["operation"] is None
    assert "computeId" not in decision.status  # nothing is claimed before ARM is read
    assert conditions(decision)["Reconciling"] == ("True", "Observing")
    assert "observe only" in decision.conditions[0].message


def test_a_compute_that_is_not_there_is_reported_not_attached() -> None:
    decision = decide(None, acknowledged())
    assert decision.action is Action.NONE
    assert conditions(decision) == {"Ready": ("False", "NotAttached"),
                                    "Reconciling": ("False", "NotAttached"),
                                    "Stalled": ("True", "NotAttached")}
    assert decision.status is not None and decision.status["computeId"] is None
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "NotAttached")]
    assert "set managementPolicy: Manage" in decision.events[0].message
    # Manage would attach it.
    assert decide(None, acknowledged(), observe=False).action is Action.PUT


def test_an_attach_under_way_is_followed_not_joined() -> None:
    for state in ("Creating", "Updating", "Deleting"):
        decision = decide(compute(state), acknowledged())
        assert decision.action is Action.NONE
        assert conditions(decision)["Reconciling"] == ("True", state)
        assert decision.status is not None and decision.status["provisioningState"] == state


def test_an_untagged_attachment_is_mirrored_and_never_adopted() -> None:
    decision = decide(compute(), acknowledged())
    assert decision.action is Action.NONE and decision.put is None
    assert conditions(decision)["Ready"] == ("True", "Attached")
    assert decision.status is not None
    assert {k: decision.status[k] for k in ("computeId", "provisioningState",
                                            "clusterResourceId", "computeLocation",
                                            "isAttachedCompute")} == {
        "computeId": OBSERVE.compute_id, "provisioningState": "Succeeded",
        "clusterResourceId": OBSERVE.batch_account_id, "computeLocation": "northeurope",
        "isAttachedCompute": True}
    assert [e.reason for e in decision.events] == ["Attached"]
    # Reported once: the next look, with Ready already recorded, posts nothing.
    assert decide(compute(), apply(acknowledged(), decision)).events == ()
    # Manage adopts the same compute with one PUT that adds the owner tags.
    assert decide(compute(), acknowledged(), observe=False).put is PutKind.ADOPT


def test_tags_and_owners_are_read_never_written() -> None:
    foreign = {OWNER_TAG: "team-b/gpu", OWNER_UID_TAG: "uid-9", "team": "b"}
    decision = decide(compute(tags=foreign), acknowledged())
    assert decision.action is Action.NONE
    assert conditions(decision)["Ready"] == ("True", "Attached")
    # A compute whose description or tags differ from the spec is not "restored" either.
    drifted = decide(compute(description="set in the portal"), acknowledged())
    assert drifted.action is Action.NONE


def test_a_detach_out_of_band_is_reported_not_repaired() -> None:
    ready = apply(acknowledged(), decide(compute(), acknowledged()))
    decision = decide(None, ready)
    assert decision.action is Action.NONE
    assert conditions(decision)["Stalled"] == ("True", "NotAttached")
    assert decision.status is not None and decision.status["provisioningState"] is None
    # Manage re-attaches it, with a Drifted event naming SDK v1's detach().
    managed = decide(None, ready, observe=False)
    assert managed.action is Action.PUT
    assert [e.reason for e in managed.events] == ["Drifted"]
    assert "BatchCompute.detach()" in managed.events[0].message


def test_another_account_or_type_under_the_name_is_a_conflict() -> None:
    other = OBSERVE.batch_account_id.replace("acct1", "acct2")
    for found in (compute(account=other), compute(compute_type="AmlCompute")):
        decision = decide(found, acknowledged())
        assert decision.action is Action.NONE
        assert conditions(decision)["Stalled"] == ("True", "Conflict")


def test_a_failed_compute_is_stalled_with_arms_error_and_not_retried() -> None:
    failed = compute("Failed", provisioning_errors=(
        ArmErrorDetail("ResourceNotFound", "the Batch account is gone"),))
    decision = decide(failed, acknowledged())
    assert decision.action is Action.NONE
    assert conditions(decision)["Stalled"] == ("True", "ResourceNotFound")
    assert decision.status is not None
    assert decision.status["provisioningErrors"] == [
        {"code": "ResourceNotFound", "message": "the Batch account is gone"}]


def test_deleting_never_detaches_whatever_the_tags_and_deletion_policy_say() -> None:
    owned = compute(tags={OWNER_TAG: OWNER.ref, OWNER_UID_TAG: OWNER.uid})
    assert OBSERVE.deletion_policy == "Detach"
    situation = Situation(OBSERVE, OWNER, EMPTY, Observed(owned), observe_only=True)
    decision = decide_detach((OBSERVE.workspace, "sdk-batch"), situation, orphan=False)
    assert decision.action is Action.RELEASE
    assert [e.reason for e in decision.events] == ["LeftInPlace"]
    managed = Situation(MANAGE, OWNER, EMPTY, Observed(owned))
    assert decide_detach((MANAGE.workspace, "sdk-batch"), managed,
                         orphan=False).action is Action.DELETE


def test_the_policy_is_an_enum_a_typo_is_refused() -> None:
    """Unlike an annotation read as "manage" when unknown, a misspelt policy is refused."""
    assert parse_spec({k: v for k, v in RAW.items() if k != "managementPolicy"},
                      "sdk-batch").management_policy == "Manage"
    assert OBSERVE.observe_only and not MANAGE.observe_only
    for wrong in ("observe", "Skip", ""):
        with pytest.raises(SpecError, match=r"managementPolicy .* is invalid: Manage or Observe"):
            parse_spec({**RAW, "managementPolicy": wrong}, "sdk-batch")
    crd = yaml.safe_load((REPO_ROOT / "crds" / "batchcomputeattachments.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["managementPolicy"]["enum"] == ["Manage", "Observe"]
    assert spec["properties"]["managementPolicy"]["default"] == "Manage"
