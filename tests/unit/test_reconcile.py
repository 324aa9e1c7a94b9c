"""The pure reconcile decision, branch by branch, from plain data."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from batchcompute_operator.compute import ArmErrorDetail, ComputeView, OperationStatus
from batchcompute_operator.reconcile import (
    OWNER_TAG,
    OWNER_UID_TAG,
    Action,
    Decision,
    Failure,
    Observed,
    Owner,
    PutKind,
    Situation,
    acknowledge,
    decide_attach,
    decide_detach,
    decide_failure,
)
from batchcompute_operator.spec import SpecError, parse_spec
from batchcompute_operator.status import EMPTY, Recorded

SUB = "00000000-0000-0000-0000-000000000001"
RAW = {"workspace": {"subscriptionId": SUB, "resourceGroup": "ml-rg", "name": "ml-ws"},
       "batchAccount": {"resourceGroup": "batch-rg", "accountName": "acct1"}}
SPEC = parse_spec(RAW, "mybatch")
OWNER = Owner("team-a", "mybatch", "uid-1", 1)
NOW = "2026-01-01T00:00:00Z"


def view(state: str = "Succeeded", *, account: str | None = None, compute_type: str = "Batch",
         uid: str | None = "uid-1", owner: str | None = None, **kw: Any) -> ComputeView:
    tags: dict[str, str] = {}
    if uid is not None:
        tags = {OWNER_TAG: owner or OWNER.ref, OWNER_UID_TAG: uid}
    return ComputeView(id=SPEC.compute_id, name="mybatch", compute_type=compute_type,
                       resource_id=account or SPEC.batch_account_id, provisioning_state=state,
                       tags=tags, **kw)


def apply(recorded: Recorded, decision: Decision, generation: int = 1) -> Recorded:
    return recorded.updated(decision.status, decision.conditions, generation, NOW)


def acked(recorded: Recorded = EMPTY) -> Recorded:
    """The status right after the operator acknowledged generation 1."""
    return apply(recorded, acknowledge(SPEC, recorded, requested_name="mybatch"))


def attach(recorded: Recorded, compute: ComputeView | None, **kw: Any) -> Decision:
    return decide_attach(Situation(SPEC, OWNER, recorded, Observed(compute), **kw))


def ready() -> Recorded:
    return apply(acked(), attach(acked(), view()))


def test_a_new_generation_is_acknowledged_before_any_arm_call() -> None:
    decision = acknowledge(SPEC, EMPTY, requested_name="mybatch")
    assert decision.action is Action.NONE
    status = apply(EMPTY, decision)
    assert status.observed_generation == 1
    assert [(c.type, c.status) for c in status.conditions] == \
        [("Ready", "False"), ("Reconciling", "True"), ("Stalled", "False")]
    assert status.operation is not None and status.operation.kind == "Attach"
    assert status.compute_name == "mybatch"
    assert decision.events == ()


def test_the_put_after_the_acknowledgement_writes_no_status() -> None:
    status = acked()
    decision = attach(status, None)
    assert decision.action is Action.PUT and decision.put is PutKind.CREATE
    assert [e.reason for e in decision.events] == ["Attaching"]
    assert status.patch_to(apply(status, decision)) == {}


def test_an_invalid_spec_is_stalled_at_once_and_names_the_requested_compute() -> None:
    error = SpecError(["computeName 'x' is invalid"])
    status = apply(EMPTY, acknowledge(error, EMPTY, requested_name="x"))
    assert status.is_true("Stalled")
    assert status.condition("Ready").reason == "InvalidSpec"  # type: ignore[union-attr]
    assert status.compute_name == "x"


def test_a_denied_workspace_is_stalled_without_arm() -> None:
    decision = acknowledge(SPEC, EMPTY, requested_name="mybatch", denial="not yours")
    assert decision.action is Action.NONE
    assert decision.conditions[2].reason == "WorkspaceNotAllowed"


def test_attached_compute_is_ready_and_reports_once() -> None:
    status = acked()
    first = attach(status, view())
    assert first.action is Action.NONE
    settled = apply(status, first)
    assert settled.is_true("Ready", 1)
    assert settled.provisioning_state == "Succeeded" and settled.operation is None
    assert settled.provisioning_errors == ()
    assert [e.reason for e in first.events] == ["Attached"]
    again = attach(settled, view())
    assert again.events == ()
    assert settled.patch_to(apply(settled, again)) == {}


def test_waiting_on_arm_writes_nothing() -> None:
    for state in ("Creating", "Updating", "Unknown"):
        decision = attach(acked(), view(state))
        assert decision.action is Action.NONE and decision.status is None, state


def test_an_untagged_attachment_of_the_same_account_is_adopted() -> None:
    decision = attach(acked(), view(uid=None))
    assert decision.action is Action.PUT and decision.put is PutKind.ADOPT
    assert [e.reason for e in decision.events] == ["Adopting"]


def test_conflicts_are_never_overwritten() -> None:
    cases = [view(compute_type="AmlCompute", uid=None), view(uid="someone-else", owner="x/y"),
             view(uid=None, account=SPEC.batch_account_id.replace("acct1", "acct2"))]
    for compute in cases:
        decision = attach(acked(), compute)
        assert decision.action is Action.NONE, compute
        assert decision.conditions[2].reason == "Conflict"
        assert "pick another computeName" in decision.conditions[2].message


def test_a_conflict_message_describes_a_compute_without_resource_id() -> None:
    decision = attach(acked(), replace(view(compute_type="AmlCompute", uid=None),
                                       resource_id=None))
    message = decision.conditions[2].message
    assert "a AmlCompute" not in message and "for no resource" not in message
    assert "a compute of type AmlCompute with no resource id" in message


def test_a_recreated_resource_adopts_what_its_earlier_self_left() -> None:
    leftover = view(uid="uid-old")  # tags name team-a/mybatch with an earlier uid
    decision = attach(acked(), leftover, live_uids={"uid-1"})
    assert decision.action is Action.PUT and decision.put is PutKind.ADOPT
    assert "uid-old" in decision.events[0].message
    still_there = attach(acked(), leftover, live_uids={"uid-1", "uid-old"})
    assert still_there.action is Action.NONE
    assert "uid-old" in still_there.conditions[2].message


def test_a_failed_attach_stalls_with_the_arm_code_and_retries_quietly() -> None:
    error = ArmErrorDetail("ResourceNotFound", "no such Batch account")
    failed_view = view("Failed", provisioning_errors=(error,))
    first = attach(acked(), failed_view)
    assert first.action is Action.NONE and first.failed
    stalled = apply(acked(), first)
    assert stalled.condition("Ready").reason == "ResourceNotFound"  # type: ignore[union-attr]
    assert stalled.is_true("Stalled")
    assert [e.reason for e in first.events] == ["AttachFailed"]
    assert "check spec.batchAccount" in first.events[0].message
    # Backing off: nothing sent, nothing written.
    waiting = attach(stalled, failed_view, retry_due=False)
    assert waiting.action is Action.NONE and waiting.status is None
    # Retry due: one quiet PUT, with no status change and no event.
    retry = attach(stalled, failed_view, retry_due=True)
    assert retry.action is Action.PUT and retry.events == () and retry.status is None
    # The same again after a synchronous refusal left no compute behind.
    assert attach(stalled, None).action is Action.PUT
    assert attach(stalled, None).events == ()


def test_an_operation_that_ended_badly_is_reported_from_the_operation() -> None:
    status = acked()
    asked = decide_attach(Situation(SPEC, OWNER, status, Observed(None), has_operation_url=True))
    assert asked.action is Action.CHECK_OPERATION
    done = OperationStatus("Canceled", ArmErrorDetail("OperationCanceled", "by someone"))
    decision = decide_attach(Situation(SPEC, OWNER, status, Observed(None, done, True),
                                       has_operation_url=True))
    assert decision.conditions[2].reason == "OperationCanceled"
    running = decide_attach(Situation(SPEC, OWNER, status,
                                      Observed(None, OperationStatus("InProgress"), True),
                                      has_operation_url=True))
    assert running.action is Action.NONE and running.status is None


def test_a_vanished_compute_is_drift_repaired_with_one_event() -> None:
    decision = attach(ready(), None)
    assert decision.action is Action.PUT and decision.put is PutKind.CREATE
    assert [e.reason for e in decision.events] == ["Drifted"]
    assert "BatchCompute.detach()" in decision.events[0].message
    assert not apply(ready(), decision).is_true("Ready")


def test_changed_tags_are_restored() -> None:
    spec = parse_spec({**RAW, "tags": {"team": "ml"}}, "mybatch")
    decision = decide_attach(Situation(spec, OWNER, ready(), Observed(view())))
    assert decision.action is Action.PUT and decision.put is PutKind.UPDATE
    assert [e.reason for e in decision.events] == ["Drifted"]


def test_a_changed_account_detaches_the_old_one_first() -> None:
    other = parse_spec({**RAW, "batchAccount": {"resourceGroup": "batch-rg",
                                                "accountName": "acct2"}}, "mybatch")
    owner = replace(OWNER, generation=2)
    status = apply(ready(), acknowledge(other, ready(), requested_name="mybatch"), 2)
    decision = decide_attach(Situation(other, owner, status, Observed(view())))
    assert decision.action is Action.DELETE
    after = apply(status, decision, 2)
    assert after.operation is not None and after.operation.kind == "Detach"
    gone = decide_attach(Situation(other, owner, after, Observed(None)))
    assert gone.action is Action.PUT
    assert [e.reason for e in gone.events] == ["Detached", "Attaching"]


def test_workspace_and_name_are_immutable() -> None:
    moved = parse_spec({**RAW, "computeName": "othername"}, "mybatch")
    decision = decide_attach(Situation(moved, OWNER, ready(), Observed(None)))
    assert decision.conditions[2].reason == "InvalidSpec"


# -- detach ------------------------------------------------------------------------------------

TARGET = (SPEC.workspace, SPEC.compute_name)


def detach(recorded: Recorded, compute: ComputeView | None, *, orphan: bool = False,
           **kw: Any) -> Decision:
    return decide_detach(TARGET, Situation(SPEC, OWNER, recorded, Observed(compute), **kw),
                         orphan=orphan)


def test_detach_sends_one_delete_and_says_so_once() -> None:
    decision = detach(ready(), view())
    assert decision.action is Action.DELETE
    assert [e.reason for e in decision.events] == ["Detaching"]
    detaching = apply(ready(), decision)
    assert detaching.operation is not None and detaching.operation.kind == "Detach"
    done = detach(detaching, None)
    assert done.action is Action.RELEASE
    assert [e.reason for e in done.events] == ["Detached"]


def test_release_reasons_say_what_happened() -> None:
    assert detach(ready(), view(), orphan=True).events[0].reason == "Orphaned"
    assert detach(ready(), view(), observe_only=True).events[0].reason == "LeftInPlace"
    assert detach(ready(), None).events[0].reason == "NotAttached"
    other = detach(ready(), view(uid="someone-else", owner="x/y"))
    assert other.action is Action.RELEASE and other.events[0].reason == "LeftInPlace"
    assert detach(ready(), view(compute_type="AmlCompute")).events[0].reason == "LeftInPlace"


def test_a_deletion_during_attach_shows_the_pending_detach() -> None:
    decision = detach(acked(), view("Creating"))
    assert decision.action is Action.NONE
    status = apply(acked(), decision)
    assert status.operation is not None and status.operation.kind == "Detach"
    assert status.condition("Reconciling").reason == "Detaching"  # type: ignore[union-attr]
    assert "waiting for the creating operation" in status.conditions[0].message


def test_a_failed_detach_is_reported_once_then_retried_quietly() -> None:
    detaching = apply(ready(), detach(ready(), view()))
    result = OperationStatus("Failed", ArmErrorDetail("InternalError", "boom"))
    failed = decide_detach(TARGET, Situation(SPEC, OWNER, detaching,
                                             Observed(view(), result, True),
                                             has_operation_url=True), orphan=False)
    assert failed.action is Action.NONE and failed.failed
    assert [e.reason for e in failed.events] == ["DetachFailed"]
    stalled = apply(detaching, failed)
    assert stalled.condition("Ready").reason == "InternalError"  # type: ignore[union-attr]
    assert detach(stalled, view(), retry_due=False).action is Action.NONE
    retry = detach(stalled, view(), retry_due=True)
    assert retry.action is Action.DELETE and retry.events == ()


# -- failures ----------------------------------------------------------------------------------

def test_a_transient_failure_keeps_a_ready_attachment_ready() -> None:
    decision = decide_failure(Failure("TooManyRequests", "slow down", True, throttled=True),
                              Situation(SPEC, OWNER, ready()), detaching=False)
    status = apply(ready(), decision)
    assert status.is_true("Ready", 1)
    assert status.condition("Reconciling").reason == "Throttled"  # type: ignore[union-attr]
    assert not decision.failed


def test_a_permanent_failure_names_the_code_and_the_remedy() -> None:
    decision = decide_failure(Failure("AuthorizationFailed", "no access", False),
                              Situation(SPEC, OWNER, acked()), detaching=False)
    stalled = decision.conditions[2]
    assert stalled.status == "True" and stalled.reason == "AuthorizationFailed"
    assert "AzureML Compute Operator" in stalled.message and SPEC.workspace.arm_id in \
        stalled.message
    assert [e.reason for e in decision.events] == ["AttachFailed"]
    detaching = decide_failure(Failure("UnsafeOperationUrl", "elsewhere", False),
                               Situation(SPEC, OWNER, ready()), detaching=True)
    assert [e.reason for e in detaching.events] == ["DetachFailed"]
    assert detaching.conditions[0].reason == "UnsafeOperationUrl"


def test_credentials_that_cannot_work_are_stalled_as_such() -> None:
    decision = decide_failure(Failure("CredentialsUnavailable", "no variables", False,
                                      source="identity", target="credentials"),
                              Situation(SPEC, OWNER, acked()), detaching=False)
    assert decision.conditions[2].reason == "CredentialsUnavailable"
    assert "ARM" not in decision.conditions[2].message


# -- observe only ------------------------------------------------------------------------------

def observe(compute: ComputeView | None, recorded: Recorded = EMPTY) -> Decision:
    return decide_attach(Situation(SPEC, OWNER, recorded, Observed(compute), observe_only=True))


def test_observe_only_mirrors_arm_and_never_writes_there() -> None:
    for compute in (None, view(), view(uid=None), view("Creating"), view("Failed"),
                    view(compute_type="AmlCompute")):
        assert observe(compute).action is Action.NONE
    assert observe(view(uid="someone")).conditions[0].status == "True"
    assert observe(None).conditions[2].reason == "NotAttached"
    assert observe(view(compute_type="AmlCompute")).conditions[2].reason == "Conflict"


def test_a_hand_written_status_with_non_string_fields_reads_them_as_text() -> None:
    # The CRD types these as strings; a status from elsewhere (an older CRD, a restore) may not.
    recorded = Recorded.from_status({
        "operation": {"kind": "Attach", "since": 1700000000},
        "conditions": [{"type": "Ready", "status": True, "reason": 7, "message": "m",
                        "lastTransitionTime": None}],
    })
    ready = recorded.condition("Ready")
    assert ready is not None
    assert (ready.status, ready.reason, ready.since) == ("True", "7", "")
    assert recorded.operation is not None and recorded.operation.since == "1700000000"
