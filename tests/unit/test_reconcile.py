"""The pure reconcile decision, branch by branch, from plain data."""

from __future__ import annotations

from typing import Any

from batchcompute_operator.reconcile import (
    OWNER_UID_TAG,
    Action,
    Observed,
    Owner,
    decide_attach,
    decide_detach,
)
from batchcompute_operator.spec import SpecError, parse_spec
from batchcompute_operator.workspace.models import (
    ArmErrorDetail,
    ComputeView,
    OperationStatus,
)

SUB = "00000000-0000-0000-0000-000000000001"
SPEC = parse_spec({"workspace": {"subscriptionId": SUB, "resourceGroup": "ml-rg", "name": "ml-ws"},
                   "batchAccount": {"resourceGroup": "batch-rg", "accountName": "acct1"}},
                  "mybatch")
OWNER = Owner("team-a", "mybatch", "uid-1", 1)


def view(state: str = "Succeeded", *, account: str | None = None, compute_type: str = "Batch",
         uid: str | None = "uid-1", **kw: Any) -> ComputeView:
    tags = {**OWNER.tags()} if uid == "uid-1" else ({OWNER_UID_TAG: uid} if uid else {})
    return ComputeView(id=SPEC.compute_id, name="mybatch", compute_type=compute_type,
                       resource_id=account or SPEC.batch_account_id, provisioning_state=state,
                       tags=tags, **kw)


def test_absent_compute_is_attached() -> None:
    decision = decide_attach(SPEC, OWNER, {}, Observed(None))
    assert decision.action is Action.PUT
    assert decision.operation_kind == "Attach"
    assert [e.reason for e in decision.events] == ["Attaching"]


def test_attached_compute_is_ready_and_reports_once() -> None:
    first = decide_attach(SPEC, OWNER, {"operation": {"kind": "Attach"}}, Observed(view()))
    assert first.action is Action.NONE
    assert first.status["provisioningState"] == "Succeeded"
    assert first.status["operation"] is None
    assert [c.status for c in first.conditions] == ["True", "False", "False"]
    assert [e.reason for e in first.events] == ["Attached"]
    settled = {"provisioningState": "Succeeded",
               "conditions": [{"type": "Ready", "status": "True"}]}
    again = decide_attach(SPEC, OWNER, settled, Observed(view()))
    assert again.action is Action.NONE
    assert again.events == []


def test_in_flight_attach_waits() -> None:
    status = {"operation": {"kind": "Attach", "url": "u"}}
    assert decide_attach(SPEC, OWNER, status, Observed(view("Creating"))).action is Action.WAIT


def test_absent_during_attach_asks_the_operation_then_reports_its_failure() -> None:
    status = {"operation": {"kind": "Attach", "url": "u"}}
    assert decide_attach(SPEC, OWNER, status, Observed(None)).action is Action.CHECK_OPERATION
    failed = OperationStatus("Failed", ArmErrorDetail("BadRequest", "nope"))
    decision = decide_attach(SPEC, OWNER, status, Observed(None, failed, True))
    assert decision.action is Action.NONE
    assert decision.status["provisioningErrors"] == [{"code": "BadRequest", "message": "nope"}]
    assert decision.conditions[2].status == "True"  # Stalled


def test_expired_operation_decides_from_what_is_there() -> None:
    status = {"operation": {"kind": "Attach", "url": "u"}}
    decision = decide_attach(SPEC, OWNER, status, Observed(None, None, True))
    assert decision.action is Action.PUT


def test_failed_compute_reports_provisioning_errors() -> None:
    errors = (ArmErrorDetail("ResourceNotFound", "no such account"),)
    decision = decide_attach(SPEC, OWNER, {"operation": {"kind": "Attach"}},
                             Observed(view("Failed", provisioning_errors=errors)))
    assert decision.action is Action.NONE
    assert decision.status["provisioningErrors"][0]["code"] == "ResourceNotFound"
    assert [e.reason for e in decision.events] == ["AttachFailed"]


def test_failed_compute_is_retried_on_resync() -> None:
    decision = decide_attach(SPEC, OWNER, {}, Observed(view("Failed")), resync=True)
    assert decision.action is Action.PUT


def test_other_type_other_account_other_owner_are_conflicts() -> None:
    for observed in (view(compute_type="AKS"), view(account=SPEC.batch_account_id + "x", uid=None),
                     view(uid="uid-2")):
        decision = decide_attach(SPEC, OWNER, {}, Observed(observed))
        assert decision.action is Action.NONE
        assert [e.reason for e in decision.events] == ["Conflict"]


def test_same_account_without_owner_is_adopted() -> None:
    decision = decide_attach(SPEC, OWNER, {}, Observed(view(uid=None)))
    assert decision.action is Action.PUT
    assert "adopting" in decision.events[-1].message


def test_changed_account_detaches_first() -> None:
    decision = decide_attach(SPEC, OWNER, {}, Observed(view(account="/x/other")))
    assert decision.action is Action.DELETE
    assert decision.operation_kind == "Detach"


def test_detach_done_then_attach_new() -> None:
    status = {"operation": {"kind": "Detach"}, "clusterResourceId": "/x/old"}
    decision = decide_attach(SPEC, OWNER, status, Observed(None))
    assert decision.action is Action.PUT
    assert [e.reason for e in decision.events] == ["Detached", "Attaching"]


def test_vanished_attachment_is_drift() -> None:
    status = {"provisioningState": "Succeeded"}
    decision = decide_attach(SPEC, OWNER, status, Observed(None))
    assert decision.action is Action.PUT
    assert [e.reason for e in decision.events] == ["Drifted", "Attaching"]


def test_changed_tags_are_drift_repaired_by_put() -> None:
    spec = parse_spec({"workspace": {"subscriptionId": SUB, "resourceGroup": "ml-rg",
                                     "name": "ml-ws"},
                       "batchAccount": {"resourceGroup": "batch-rg", "accountName": "acct1"},
                       "tags": {"team": "ml"}}, "mybatch")
    decision = decide_attach(spec, OWNER, {"provisioningState": "Succeeded"}, Observed(view()))
    assert decision.action is Action.PUT
    assert "Drifted" in [e.reason for e in decision.events]


def test_invalid_spec_and_immutable_fields() -> None:
    decision = decide_attach(SpecError(["bad"]), OWNER, {}, Observed(None))
    assert decision.action is Action.NONE
    assert decision.events[0].reason == "InvalidSpec"
    moved = decide_attach(SPEC, OWNER, {"computeId": SPEC.compute_id + "x"}, Observed(None))
    assert moved.action is Action.NONE
    assert "immutable" in moved.events[0].message


def test_detach_paths() -> None:
    cid = SPEC.compute_id
    assert decide_detach(cid, "Orphan", OWNER, {}, Observed(view())).action is Action.RELEASE
    assert decide_detach(cid, "Detach", OWNER, {}, Observed(None)).action is Action.RELEASE
    assert decide_detach(cid, "Detach", OWNER, {}, Observed(view(uid="other"))).action \
        is Action.RELEASE
    assert decide_detach(cid, "Detach", OWNER, {}, Observed(view())).action is Action.DELETE
    assert decide_detach(cid, "Detach", OWNER, {}, Observed(view("Creating"))).action \
        is Action.WAIT
    in_flight = {"operation": {"kind": "Detach", "url": "u"}}
    assert decide_detach(cid, "Detach", OWNER, in_flight, Observed(view())).action \
        is Action.CHECK_OPERATION
    failed = decide_detach(cid, "Detach", OWNER, in_flight,
                           Observed(view(), OperationStatus("Failed"), True))
    assert failed.action is Action.NONE
    assert failed.status["operation"] is None
