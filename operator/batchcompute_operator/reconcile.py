"""The reconcile decision: spec + recorded status + observed compute -> next action + status.

Pure: no I/O, no clock, no framework. Every branch of the SDK v1 `BatchCompute` life cycle
(attach, already attached, adoption, conflict, failed operation, spec change, drift, detach,
observe-only) and every failure the engine reports is one path through the `decide_*`
functions below, so each is unit-testable from plain data.

Statuses are chosen so that the steps of one attach produce one status between the first
write and Ready: the acknowledgement of a new generation already says what is being done, the
PUT that follows changes nothing in status, and waiting on ARM writes nothing at all.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from batchcompute_operator import conditions as cond
from batchcompute_operator.compute import ComputeView, OperationStatus
from batchcompute_operator.spec import AttachmentSpec, SpecError, WorkspaceRef, same_arm_id
from batchcompute_operator.status import Recorded

OWNER_UID_TAG = "batchcompute-operator.owner-uid"
OWNER_TAG = "batchcompute-operator.owner"
BUSY_STATES = ("Creating", "Updating", "Deleting", "Unknown")


class Action(enum.Enum):
    NONE = "none"  # converged, stalled, or waiting: nothing to send to ARM
    PUT = "put"  # attach, adopt or update the compute
    DELETE = "delete"  # detach the compute (never delete the Batch account)
    CHECK_OPERATION = "check-operation"  # the compute list cannot tell: ask the operation
    RELEASE = "release"  # deletion may complete: the finalizer may go


class PutKind(enum.Enum):
    CREATE = "create"  # nothing is there: the name must be claimed and re-read first
    ADOPT = "adopt"  # our own attachment without (or with stale) owner tags
    UPDATE = "update"  # ours: restore tags/description, or retry a failed attach


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Owner:
    """The Kubernetes resource on whose behalf the compute is attached."""

    namespace: str
    name: str
    uid: str
    generation: int

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def tags(self) -> dict[str, str]:
        return {OWNER_TAG: self.ref, OWNER_UID_TAG: self.uid}


@dataclass(frozen=True)
class Observed:
    compute: ComputeView | None
    operation: OperationStatus | None = None  # only after CHECK_OPERATION
    operation_checked: bool = False


@dataclass(frozen=True)
class Decision:
    action: Action
    status: Mapping[str, Any] | None = None  # status fields to set (None clears one)
    conditions: tuple[cond.Condition, ...] = ()
    events: tuple[Event, ...] = ()
    put: PutKind | None = None
    failed: bool = False  # a permanent failure: the engine backs off before trying again


WAIT = Decision(Action.NONE)


@dataclass(frozen=True)
class Situation:
    """Everything a decision reads; plain data the engine assembles."""

    spec: AttachmentSpec | None  # None only for a deletion whose spec is invalid
    owner: Owner
    recorded: Recorded
    observed: Observed = Observed(None)
    retry_due: bool = True  # a permanent failure's backoff has elapsed (or there is none)
    has_operation_url: bool = False  # this process knows the operation it sent
    live_uids: Container[str] = field(default_factory=frozenset)  # resources in the cluster
    observe_only: bool = False


@dataclass(frozen=True)
class Failure:
    """A call that failed, as the engine classified it."""

    code: str
    message: str
    retryable: bool
    throttled: bool = False
    source: str = "ARM"  # ARM, identity, Kubernetes: who said it
    target: str = "compute"  # workspace, list, compute, operation, credentials


# -- status pieces -----------------------------------------------------------------------------

def _desc(view: ComputeView) -> str:
    target = f"for {view.resource_id}" if view.resource_id else "with no resource id"
    owner = view.tags.get(OWNER_TAG)
    owned = f", owned by {owner}" if owner else ""
    return (f"a compute of type {view.compute_type} {target} (state "
            f"{view.provisioning_state}{owned})")


def _owned_by(view: ComputeView, owner: Owner) -> bool | None:
    """True: ours; False: another resource's; None: nobody recorded ownership."""
    uid = view.tags.get(OWNER_UID_TAG)
    if uid is None:
        return None
    return uid == owner.uid


def compute_fields(view: ComputeView) -> dict[str, Any]:
    """Status fields mirroring SDK v1 `serialize()` for a compute ARM reported."""
    return {
        "computeId": view.id or None,
        "computeName": view.name,
        "provisioningState": view.provisioning_state,
        "provisioningErrors": [e.as_status() for e in view.provisioning_errors],
        "clusterResourceId": view.resource_id,
        "computeLocation": view.compute_location,
        "isAttachedCompute": view.is_attached,
    }


NO_COMPUTE: Mapping[str, Any] = {"provisioningState": None, "clusterResourceId": None,
                                 "computeLocation": None, "isAttachedCompute": None}


def attaching_message(spec: AttachmentSpec) -> str:
    return (f"attaching {spec.batch_account_id} as {spec.compute_name!r} in workspace "
            f"{spec.workspace.name!r}")


def _in_progress(spec: AttachmentSpec, recorded: Recorded) -> tuple[cond.Condition, ...]:
    """What a resource that is being brought to its spec says, from acknowledgement to Ready.

    Derived from fields the acknowledgement itself does not change, so the PUT that follows
    it finds nothing to write.
    """
    if recorded.provisioning_state == "Succeeded" and recorded.compute_id:
        return tuple(cond.progressing(
            "Updating", f"bringing {spec.compute_name!r} in workspace {spec.workspace.name!r} "
                        "to the current spec"))
    return tuple(cond.progressing("Attaching", attaching_message(spec)))


def reason_for(code: str) -> str:
    """An ARM error code as a condition reason (metav1: a CamelCase identifier)."""
    cleaned = re.sub(r"[^A-Za-z0-9_]", "", code)
    return cleaned if cleaned[:1].isalpha() else f"Error{cleaned}" if cleaned else "ArmError"


def remedy(code: str, target: str, spec: AttachmentSpec | None) -> str:
    """What the resource's owner can do about an error: one sentence, or empty."""
    ws = spec.workspace if spec is not None else None
    where = f" {ws.name!r} ({ws.arm_id})" if ws is not None else ""
    if code == "AuthorizationFailed":
        account = f" and a role with Microsoft.Batch/batchAccounts/read and listKeys/action on " \
                  f"{spec.batch_account_id}" if spec is not None else ""
        return (f"grant the operator's identity 'AzureML Compute Operator' and 'Reader' on "
                f"workspace{where}{account}")
    if code in ("ResourceGroupNotFound", "SubscriptionNotFound") or \
            (code in ("ResourceNotFound", "WorkspaceNotFound") and target in ("workspace", "list")):
        return "check spec.workspace; it is immutable, so recreate the resource to change it"
    if code == "ResourceNotFound":
        account = spec.batch_account_id if spec is not None else "the Batch account"
        return (f"check spec.batchAccount: {account} does not exist or the identity cannot "
                "see it; the attach is retried with backoff")
    if code in ("InvalidApiVersionParameter", "NoRegisteredProviderFound", "InvalidComputeType"):
        return "keep BCO_API_VERSION at 2020-02-02, the last version that knows Batch computes"
    if code == "UnsafeOperationUrl":
        return "check BCO_ARM_ENDPOINT; nothing was sent to that URL"
    if code == "InvalidTagCount":
        return "use at most 48 tags in spec.tags (the operator adds 2 of its own)"
    return ""


def _with_remedy(message: str, code: str, target: str, spec: AttachmentSpec | None) -> str:
    tail = remedy(code, target, spec)
    return f"{message}; {tail}" if tail else message


# -- acknowledgement (before any ARM call) -----------------------------------------------------

def invalid(error: SpecError, requested_name: str | None = None) -> Decision:
    message = str(error)
    status: dict[str, Any] = {"provisioningErrors": [{"code": "InvalidSpec", "message": message}],
                              "operation": None}
    if requested_name:
        status["computeName"] = requested_name
    return Decision(Action.NONE, status, tuple(cond.stalled("InvalidSpec", message)),
                    (Event("Warning", "InvalidSpec", message),))


def not_allowed(denial: str, spec: AttachmentSpec) -> Decision:
    return Decision(Action.NONE,
                    {"provisioningErrors": [{"code": "WorkspaceNotAllowed", "message": denial}],
                     "computeName": spec.compute_name, "operation": None},
                    tuple(cond.stalled("WorkspaceNotAllowed", denial)),
                    (Event("Warning", "WorkspaceNotAllowed", denial),))


def _immutable(recorded_id: str) -> SpecError:
    return SpecError([
        f"workspace and computeName are immutable: this resource manages {recorded_id}; "
        "delete it and create a new one to attach elsewhere"])


def acknowledge(spec: AttachmentSpec | SpecError, recorded: Recorded, *,
                requested_name: str, denial: str | None = None,
                observe_only: bool = False) -> Decision:
    """The first status of a new generation: observed, and either under way or stalled."""
    if isinstance(spec, SpecError):
        return invalid(spec, requested_name)
    if recorded.compute_id and not same_arm_id(recorded.compute_id, spec.compute_id):
        return invalid(_immutable(recorded.compute_id), requested_name)
    if denial is not None:
        return not_allowed(denial, spec)
    if observe_only:
        return Decision(Action.NONE, {"computeName": spec.compute_name, "operation": None,
                                      "provisioningErrors": []},
                        tuple(cond.progressing(
                            "Observing", f"reading compute {spec.compute_name!r} in workspace "
                                         f"{spec.workspace.name!r} (observe only)")))
    return Decision(Action.NONE,
                    {"computeName": spec.compute_name, "computeId": spec.compute_id,
                     "operation": "Attach", "provisioningErrors": []},
                    _in_progress(spec, recorded))


# -- attach side -------------------------------------------------------------------------------

def _conflict(view: ComputeView, spec: AttachmentSpec, why: str = "") -> Decision:
    message = (f"compute {spec.compute_name!r} in workspace {spec.workspace.name!r} is "
               f"{_desc(view)}{why}; it is left untouched: pick another computeName, or "
               "remove that compute")
    return conflict(message, spec)


def conflict(message: str, spec: AttachmentSpec) -> Decision:
    return Decision(
        Action.NONE,
        {"provisioningErrors": [{"code": "Conflict", "message": message}], **NO_COMPUTE,
         "computeName": spec.compute_name, "computeId": None, "operation": None},
        tuple(cond.stalled("Conflict", message)),
        (Event("Warning", "Conflict", message),),
    )


def claimed(spec: AttachmentSpec, holder: str) -> Decision:
    """Another resource of this cluster is attaching the same compute name right now."""
    return conflict(f"compute {spec.compute_name!r} in workspace {spec.workspace.name!r} is "
                    f"being attached by {holder}; it is left to that resource: pick another "
                    "computeName, or delete one of the two", spec)


def _put(spec: AttachmentSpec, recorded: Recorded, kind: PutKind, *events: Event) -> Decision:
    """A PUT whose status is the in-progress one the acknowledgement already wrote."""
    return Decision(Action.PUT,
                    {"computeName": spec.compute_name, "computeId": spec.compute_id,
                     "operation": "Attach", "provisioningErrors": []},
                    _in_progress(spec, recorded), events, put=kind)


def _pending(s: Situation) -> Decision | None:
    """Ask the operation while we can, wait while it runs; None once it ended or is unknown."""
    if s.has_operation_url and not s.observed.operation_checked:
        return Decision(Action.CHECK_OPERATION)
    result = s.observed.operation
    if result is not None and not result.done:
        return WAIT
    return None


def _ended_badly(observed: Observed) -> OperationStatus | None:
    result = observed.operation
    return result if result is not None and result.status in ("Failed", "Canceled") else None


def _while_in_flight(s: Situation, view: ComputeView | None, kind: str,
                     spec: AttachmentSpec | None) -> Decision | None:
    """An operation of ours may still run: ask it, wait for it, or report how it ended badly.

    None: it ended well or is unknown, so decide from what ARM has.
    """
    pending = _pending(s)
    if pending is not None:
        return pending
    result = _ended_badly(s.observed)
    return _failed(view, result, kind, spec) if result is not None else None


def _failed(view: ComputeView | None, op: OperationStatus | None, kind: str,
            spec: AttachmentSpec | None) -> Decision:
    """An operation (or the compute ARM left behind) ended Failed or Canceled: stalled."""
    errors = [e.as_status() for e in view.provisioning_errors] if view is not None else []
    if not errors and op is not None and op.error is not None:
        errors = [op.error.as_status()]
    state = op.status if op is not None and op.done else \
        (view.provisioning_state if view is not None else "Failed")
    first = errors[0] if errors else {"code": state,
                                      "message": f"the {kind.lower()} operation ended {state}"}
    message = _with_remedy(f"{first['code']}: {first['message']}", first["code"], "compute",
                           spec)
    fields: dict[str, Any] = compute_fields(view) if view is not None else \
        {"provisioningState": state}
    fields["provisioningErrors"] = errors or [first]
    fields["operation"] = None
    if view is None and spec is not None:
        fields["computeName"] = spec.compute_name
    return Decision(Action.NONE, fields, tuple(cond.stalled(reason_for(first["code"]), message)),
                    (Event("Warning", f"{kind}Failed", message),), failed=True)


NOT_FAILURES = frozenset({"InvalidSpec", "Conflict", "WorkspaceNotAllowed", "NotAttached"})


def _failure_reported(rec: Recorded) -> bool:
    """Stalled because ARM refused or failed a request (not for a reason of our own)."""
    stalled = rec.condition("Stalled")
    return stalled is not None and stalled.status == "True" and \
        stalled.reason not in NOT_FAILURES


def _stalled_by_failure(rec: Recorded) -> bool:
    """An attach ARM refused or failed, already reported."""
    return _failure_reported(rec) and rec.operation is None


def _needs_update(view: ComputeView, spec: AttachmentSpec, owner: Owner) -> list[str]:
    """What the compute lacks of the spec's description and tags (drift we repair)."""
    wanted = {**spec.tags, **owner.tags()}
    drift = [f"tag {k!r}" for k, v in wanted.items() if view.tags.get(k) != v]
    if (spec.description or None) != (view.description or None):
        drift.append("description")
    return drift


def _ready(view: ComputeView, spec: AttachmentSpec, s: Situation) -> Decision:
    rec = s.recorded
    message = f"{spec.batch_account_id} is attached as {spec.compute_name!r}"
    events: tuple[Event, ...] = ()
    if not rec.is_true("Ready") or rec.provisioning_state != "Succeeded":
        events = (Event("Normal", "Attached", message),)
    return Decision(Action.NONE, {**compute_fields(view), "operation": None},
                    tuple(cond.ready("Attached", message)), events)


def decide_attach(s: Situation) -> Decision:
    """Next step towards "attached as declared" for a resource that is not being deleted."""
    decision = _decide_attach(s)
    if decision.action in (Action.PUT, Action.DELETE) and not s.retry_due:
        return WAIT  # a permanent failure is backing off: keep its status steady
    return decision


def _decide_attach(s: Situation) -> Decision:
    spec, owner, rec, view = s.spec, s.owner, s.recorded, s.observed.compute
    assert spec is not None, "an attach needs a valid spec"
    if rec.compute_id and not same_arm_id(rec.compute_id, spec.compute_id):
        return invalid(_immutable(rec.compute_id), spec.compute_name)
    if s.observe_only:
        return decide_observe(s)
    op = rec.operation.kind if rec.operation is not None else None
    events: list[Event] = []

    if op == "Detach":  # detaching the previous Batch account before attaching the new one
        if view is not None and same_arm_id(view.resource_id, rec.cluster_resource_id) and \
                _owned_by(view, owner):
            if view.provisioning_state == "Deleting":
                return WAIT
            outcome = _while_in_flight(s, view, "Detach", spec)
            if outcome is not None:
                return outcome
        elif view is None:
            events.append(Event("Normal", "Detached",
                                f"detached {rec.cluster_resource_id} before attaching "
                                f"{spec.batch_account_id}"))
    elif op == "Attach" and view is None:
        outcome = _while_in_flight(s, None, "Attach", spec)
        if outcome is not None:
            return outcome
    elif op == "Attach" and view is not None and view.provisioning_state in BUSY_STATES \
            and _owned_by(view, owner) is not False:
        return WAIT

    if view is None:
        if _stalled_by_failure(rec):
            return Decision(Action.PUT, put=PutKind.CREATE, failed=True)  # a quiet retry
        if rec.provisioning_state == "Succeeded" and rec.is_true("Ready"):
            message = (f"compute {spec.compute_name!r} was detached from workspace "
                       f"{spec.workspace.name!r} outside the operator (for example by SDK v1 "
                       f"BatchCompute.detach() or the portal); re-attaching "
                       f"{spec.batch_account_id}")
            return Decision(Action.PUT,
                            {"operation": "Attach", "provisioningState": None,
                             "isAttachedCompute": None, "computeLocation": None},
                            tuple(cond.progressing("Drifted", message)),
                            (Event("Warning", "Drifted", message),), put=PutKind.CREATE)
        return _put(spec, rec, PutKind.CREATE, *events,
                    Event("Normal", "Attaching", attaching_message(spec)))

    if view.compute_type != "Batch":
        return _conflict(view, spec)
    ownership = _owned_by(view, owner)
    if ownership is False:
        previous = view.tags.get(OWNER_UID_TAG, "")
        if view.tags.get(OWNER_TAG) == owner.ref and same_arm_id(view.resource_id,
                                                                 spec.batch_account_id):
            if previous in s.live_uids:
                return _conflict(view, spec, f"; its owner tag names this resource's "
                                             f"namespace/name but uid {previous}, which still "
                                             f"exists (this resource is {owner.uid})")
            if view.provisioning_state in BUSY_STATES:
                return WAIT
            message = (f"adopting {spec.compute_name!r}: it was attached by an earlier "
                       f"{owner.ref} (uid {previous}) that no longer exists; re-tagging it as "
                       "this resource's")
            return _put(spec, rec, PutKind.ADOPT, Event("Normal", "Adopting", message))
        return _conflict(view, spec)
    if not same_arm_id(view.resource_id, spec.batch_account_id):
        if ownership is None:
            return _conflict(view, spec)
        if view.provisioning_state in BUSY_STATES:
            return WAIT
        message = (f"batch account changed: detaching {view.resource_id} before attaching "
                   f"{spec.batch_account_id}")
        return Decision(Action.DELETE, {"operation": "Detach",
                                        "clusterResourceId": view.resource_id},
                        tuple(cond.progressing("Detaching", message)),
                        (*events, Event("Normal", "Detaching", message)))

    if view.provisioning_state in BUSY_STATES:
        return WAIT
    if ownership is None:
        return _put(spec, rec, PutKind.ADOPT, *events, Event(
            "Normal", "Adopting", f"adopting the existing attachment of {spec.batch_account_id} "
                                  f"as {spec.compute_name!r}: recording this resource as its "
                                  "owner in two tags"))
    if view.provisioning_state in ("Failed", "Canceled"):
        if s.has_operation_url and not s.observed.operation_checked and \
                not _stalled_by_failure(rec):
            return Decision(Action.CHECK_OPERATION)  # its error says more than the compute
        if _stalled_by_failure(rec):
            # Already reported: retry quietly, keeping the status steady (one event per
            # change of error, not per attempt).
            return Decision(Action.PUT, put=PutKind.UPDATE, failed=True)
        return _failed(view, s.observed.operation, "Attach", spec)
    drift = _needs_update(view, spec, owner)
    if drift:
        what = ", ".join(drift)
        if rec.operation is None and rec.is_true("Ready"):
            message = f"{what} of {spec.compute_name!r} differ from the spec; restoring"
            return Decision(Action.PUT, {"operation": "Attach"},
                            tuple(cond.progressing("Drifted", message)),
                            (Event("Warning", "Drifted", message),), put=PutKind.UPDATE)
        return _put(spec, rec, PutKind.UPDATE, *events)
    return _ready(view, spec, s)


def decide_observe(s: Situation) -> Decision:
    """Observe-only: mirror what ARM has, write nothing there."""
    spec, view = s.spec, s.observed.compute
    assert spec is not None
    base = {"computeName": spec.compute_name, "operation": None}
    if view is None:
        message = (f"observe only: compute {spec.compute_name!r} is not attached in workspace "
                   f"{spec.workspace.name!r}; attach it, or set managementPolicy: Manage")
        return Decision(Action.NONE, {**base, **NO_COMPUTE, "computeId": None,
                                      "provisioningErrors": []},
                        tuple(cond.stalled("NotAttached", message)),
                        (Event("Warning", "NotAttached", message),))
    fields = {**compute_fields(view), "operation": None}
    if view.compute_type != "Batch" or not same_arm_id(view.resource_id, spec.batch_account_id):
        message = (f"observe only: compute {spec.compute_name!r} is {_desc(view)}, not an "
                   f"attachment of {spec.batch_account_id}")
        return Decision(Action.NONE, fields, tuple(cond.stalled("Conflict", message)),
                        (Event("Warning", "Conflict", message),))
    if view.provisioning_state in BUSY_STATES:
        return Decision(Action.NONE, fields, tuple(cond.progressing(
            view.provisioning_state, f"observe only: compute is {view.provisioning_state}")))
    if view.provisioning_state in ("Failed", "Canceled"):
        decision = _failed(view, None, "Attach", spec)
        return Decision(Action.NONE, {**fields, **(decision.status or {})}, decision.conditions,
                        decision.events)
    message = f"{spec.batch_account_id} is attached as {spec.compute_name!r} (observe only)"
    events = () if s.recorded.is_true("Ready") else (Event("Normal", "Attached", message),)
    return Decision(Action.NONE, fields, tuple(cond.ready("Attached", message)), events)


# -- detach side -------------------------------------------------------------------------------

def decide_detach(target: tuple[WorkspaceRef, str] | None, s: Situation, *,
                  orphan: bool) -> Decision:
    """Next step for a resource being deleted: detach what we own, then release."""
    rec, owner, view = s.recorded, s.owner, s.observed.compute
    target_id = target[0].compute_id(target[1]) if target is not None else None
    if s.observe_only:
        return Decision(Action.RELEASE, events=(Event(
            "Normal", "LeftInPlace", f"observe only: {target_id or 'the compute'} is left as "
                                     "it is"),))
    if orphan:
        return Decision(Action.RELEASE, events=(Event(
            "Normal", "Orphaned", f"deletionPolicy Orphan: {target_id or 'the compute'} stays "
                                  "attached, with this resource's owner tags"),))
    op = rec.operation.kind if rec.operation is not None else None
    if target_id is None or view is None:
        if op == "Detach" and target_id is not None:
            return Decision(Action.RELEASE, events=(Event(
                "Normal", "Detached", f"detached {rec.cluster_resource_id or target_id}"),))
        return Decision(Action.RELEASE, events=(Event(
            "Normal", "NotAttached", f"{target_id or 'no compute'} is not attached; nothing "
                                     "to detach"),))
    if _owned_by(view, owner) is not True or view.compute_type != "Batch":
        # Our tags alone are not enough: a compute of another type under the name is not the
        # attachment this resource made, whatever its tags say.
        return Decision(Action.RELEASE, events=(Event(
            "Normal", "LeftInPlace", f"left {_desc(view)} in place: this resource does not "
                                     "own it"),))
    if view.provisioning_state in ("Creating", "Updating"):
        message = (f"waiting for the {view.provisioning_state.lower()} operation on "
                   f"{view.name!r} to finish, then detaching it")
        return Decision(Action.NONE, {"operation": "Detach"},
                        tuple(cond.progressing("Detaching", message)))
    if view.provisioning_state == "Deleting":
        return WAIT
    if op == "Detach":
        if _failure_reported(rec):
            # Reported once already: try again quietly when the backoff allows.
            return Decision(Action.DELETE, failed=True) if s.retry_due else WAIT
        pending = _pending(s)
        if pending is not None:
            return pending
        result = _ended_badly(s.observed)
        if result is not None:
            failed = _failed(view, result, "Detach", s.spec)
            return Decision(Action.NONE, {**(failed.status or {}), "operation": "Detach"},
                            failed.conditions, failed.events, failed=True)
    if not s.retry_due:
        return WAIT
    message = f"detaching {view.resource_id} from workspace compute {view.name!r}"
    return Decision(Action.DELETE, {"operation": "Detach"},
                    tuple(cond.progressing("Detaching", message)),
                    (Event("Normal", "Detaching", message),))


# -- failures ----------------------------------------------------------------------------------

def decide_failure(failure: Failure, s: Situation, *, detaching: bool) -> Decision:
    """A call failed: transient ones keep a Ready attachment Ready, permanent ones stall."""
    kind = "Detach" if detaching else "Attach"
    rec, gen = s.recorded, s.owner.generation
    text = f"{failure.code}: {failure.message}" if failure.source == "ARM" else \
        failure.message
    if failure.retryable:
        reason = "CredentialsUnavailable" if failure.target == "credentials" else \
            "Throttled" if failure.throttled else \
            "AuthenticationFailed" if failure.code.startswith(("InvalidAuthentication",
                                                                "ExpiredAuthentication",
                                                                "AuthenticationFailed",
                                                                "TokenRequestFailed",
                                                                "TokenRefused")) \
            else "Retrying"
        message = f"{text} (retrying)"
        conditions: tuple[cond.Condition, ...] = tuple(cond.progressing(reason, message))
        ready = rec.condition("Ready")
        if ready is not None and rec.is_true("Ready", gen) and not detaching:
            conditions = (cond.Condition("Ready", "True", ready.reason, ready.message),
                          *conditions[1:])
        return Decision(Action.NONE, None, conditions, (Event("Warning", reason, message),))
    reason = "CredentialsUnavailable" if failure.target == "credentials" else \
        reason_for(failure.code)
    message = _with_remedy(text, failure.code, failure.target, s.spec)
    status: dict[str, Any] = {"provisioningErrors": [{"code": failure.code,
                                                      "message": failure.message}]}
    if not detaching:
        status["operation"] = None
    return Decision(Action.NONE, status, tuple(cond.stalled(reason, message)),
                    (Event("Warning", f"{kind}Failed", message),), failed=True)
