"""The reconcile decision: observed compute + spec + recorded status -> next action + status.

Pure: no I/O, no clock, no framework. Every branch of the SDK v1 `BatchCompute` life cycle
(attach, already attached, conflict, failed operation, spec change, drift, detach) is one
path through `decide_attach` or `decide_detach`, so each is unit-testable from plain data.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from batchcompute_operator import conditions as cond
from batchcompute_operator.spec import AttachmentSpec, SpecError, same_arm_id
from batchcompute_operator.workspace.models import ComputeView, OperationStatus

OWNER_UID_TAG = "batchcompute-operator.owner-uid"
OWNER_TAG = "batchcompute-operator.owner"


class Action(enum.Enum):
    NONE = "none"  # converged or stalled: nothing to do until something changes
    WAIT = "wait"  # an operation is running: look again at the next poll
    PUT = "put"  # attach (or update/adopt) the compute
    DELETE = "delete"  # detach the compute (never delete the Batch account)
    CHECK_OPERATION = "check-operation"  # the LIST cannot tell: ask the operation URL
    RELEASE = "release"  # deletion may complete: remove the finalizer


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

    def tags(self) -> dict[str, str]:
        return {OWNER_TAG: f"{self.namespace}/{self.name}", OWNER_UID_TAG: self.uid}


@dataclass(frozen=True)
class Observed:
    compute: ComputeView | None
    operation: OperationStatus | None = None  # only after CHECK_OPERATION
    operation_checked: bool = False


@dataclass
class Decision:
    action: Action
    status: dict[str, Any] = field(default_factory=dict)  # fields to set; None deletes
    conditions: list[cond.Condition] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    operation_kind: str | None = None  # for PUT/DELETE: what to record as in flight


def _desc(view: ComputeView) -> str:
    target = view.resource_id or "no resource"
    owner = view.tags.get(OWNER_TAG)
    owned = f", owned by {owner}" if owner else ""
    return f"a {view.compute_type} compute for {target} (state {view.provisioning_state}{owned})"


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


def invalid(error: SpecError) -> Decision:
    message = str(error)
    return Decision(
        Action.NONE,
        {"provisioningErrors": [{"code": "InvalidSpec", "message": message}]},
        cond.stalled("InvalidSpec", message),
        [Event("Warning", "InvalidSpec", message)],
    )


def _conflict(view: ComputeView, spec: AttachmentSpec) -> Decision:
    message = (f"compute {spec.compute_name!r} in workspace {spec.workspace.name!r} is "
               f"{_desc(view)}; it is left untouched")
    return Decision(
        Action.NONE,
        {"provisioningErrors": [{"code": "Conflict", "message": message}],
         "provisioningState": None, "computeId": None, "clusterResourceId": None,
         "computeLocation": None, "isAttachedCompute": None},
        cond.stalled("Conflict", message),
        [Event("Warning", "Conflict", message)],
    )


def _attach(spec: AttachmentSpec, why: str, events: list[Event]) -> Decision:
    message = f"attaching {spec.batch_account_id} as {spec.compute_name!r}: {why}"
    return Decision(
        Action.PUT,
        {"provisioningState": "Creating", "provisioningErrors": [],
         "computeId": spec.compute_id, "computeName": spec.compute_name,
         "clusterResourceId": spec.batch_account_id},
        cond.progressing("Attaching", message),
        [*events, Event("Normal", "Attaching", message)],
        operation_kind="Attach",
    )


def _pending(observed: Observed) -> Decision | None:
    """Ask the operation URL until asked, wait while it runs; None once it ended or expired."""
    if not observed.operation_checked:
        return Decision(Action.CHECK_OPERATION)
    if observed.operation is not None and not observed.operation.done:
        return Decision(Action.WAIT)
    return None


def _ended_badly(observed: Observed) -> OperationStatus | None:
    result = observed.operation
    return result if result is not None and result.status in ("Failed", "Canceled") else None


def _failed(view: ComputeView, op: OperationStatus | None, kind: str) -> Decision:
    errors = [e.as_status() for e in view.provisioning_errors]
    if not errors and op is not None and op.error is not None:
        errors = [op.error.as_status()]
    status = op.status if op is not None and op.done else view.provisioning_state
    first = errors[0] if errors else {"code": status, "message": f"the operation ended {status}"}
    reason = f"{kind}Failed"
    message = f"{first['code']}: {first['message']}"
    fields = compute_fields(view)
    fields["provisioningErrors"] = errors or [first]
    fields["operation"] = None
    return Decision(Action.NONE, fields, cond.stalled(reason, message),
                    [Event("Warning", reason, message)])


def _needs_update(view: ComputeView, spec: AttachmentSpec, owner: Owner) -> list[str]:
    """What the compute lacks of the spec's description and tags (drift we repair)."""
    wanted = {**spec.tags, **owner.tags()}
    drift = [f"tag {k!r}" for k, v in wanted.items() if view.tags.get(k) != v]
    if (spec.description or None) != (view.description or None):
        drift.append("description")
    return drift


def decide_attach(spec: AttachmentSpec | SpecError, owner: Owner, status: Mapping[str, Any],
                  observed: Observed, *, resync: bool = False) -> Decision:
    """Next step towards "attached as declared" for a resource that is not being deleted."""
    if isinstance(spec, SpecError):
        return invalid(spec)
    recorded_id = status.get("computeId")
    if isinstance(recorded_id, str) and recorded_id and not same_arm_id(recorded_id,
                                                                           spec.compute_id):
        return invalid(SpecError([
            f"workspace and computeName are immutable: this resource manages {recorded_id}; "
            "delete it and create a new one to attach elsewhere"]))

    view = observed.compute
    op = status.get("operation") if isinstance(status.get("operation"), Mapping) else None
    events: list[Event] = []

    if op is not None and op.get("kind") == "Detach":
        if view is not None:
            if view.provisioning_state == "Deleting":
                return Decision(Action.WAIT)
            pending = _pending(observed)
            if pending is not None:
                return pending
            failed = _ended_badly(observed)
            if failed is not None:
                return _failed(view, failed, "Detach")
        else:
            events.append(Event("Normal", "Detached",
                                f"detached {status.get('clusterResourceId')} before re-attaching"))
        # Detached (or ARM says done): carry on below as if nothing were in flight.

    elif op is not None and op.get("kind") == "Attach":
        if view is None:
            pending = _pending(observed)
            if pending is not None:
                return pending
            result = _ended_badly(observed)
            if result is not None:
                detail = result.error.as_status() if result.error else {
                    "code": result.status, "message": f"the attach operation ended {result.status}"}
                message = f"{detail['code']}: {detail['message']}"
                return Decision(Action.NONE,
                                {"provisioningState": result.status,
                                 "provisioningErrors": [detail]},
                                cond.stalled("AttachFailed", message),
                                [Event("Warning", "AttachFailed", message)])
            # Succeeded yet absent, or the operation expired: decide from what is there.
        elif view.provisioning_state in ("Creating", "Updating", "Unknown") and \
                _owned_by(view, owner) is not False:
            return Decision(Action.WAIT)

    if view is None:
        attached_before = status.get("provisioningState") == "Succeeded" and op is None
        if attached_before:
            events.append(Event("Warning", "Drifted",
                                f"compute {spec.compute_name!r} disappeared from workspace "
                                f"{spec.workspace.name!r} outside the operator; re-attaching"))
        return _attach(spec, "not attached yet" if not attached_before else "repairing drift",
                       events)

    if view.compute_type != "Batch":
        return _conflict(view, spec)
    ownership = _owned_by(view, owner)
    if ownership is False:
        return _conflict(view, spec)
    if not same_arm_id(view.resource_id, spec.batch_account_id):
        if ownership is None:
            return _conflict(view, spec)
        if view.provisioning_state in ("Creating", "Updating", "Deleting"):
            return Decision(Action.WAIT)
        message = (f"batch account changed: detaching {view.resource_id} before attaching "
                   f"{spec.batch_account_id}")
        return Decision(Action.DELETE, {"provisioningState": "Deleting"},
                        cond.progressing("Detaching", message),
                        [*events, Event("Normal", "Detaching", message)],
                        operation_kind="Detach")

    if view.provisioning_state in ("Creating", "Updating", "Deleting", "Unknown"):
        fields = compute_fields(view)
        return Decision(Action.WAIT, fields,
                        cond.progressing("Attaching", f"compute is {view.provisioning_state}"))
    if ownership is None:
        return _attach(spec, "adopting the existing attachment of the same Batch account", events)
    if view.provisioning_state in ("Failed", "Canceled"):
        if resync and op is None:
            return _attach(spec, f"retrying after the last attach ended "
                                 f"{view.provisioning_state}", events)
        return _failed(view, observed.operation, "Attach")
    drift = _needs_update(view, spec, owner)
    if drift:
        if op is None and status.get("provisioningState") == "Succeeded":
            events.append(Event("Warning", "Drifted",
                                f"{', '.join(drift)} differ from the spec; updating"))
        return _attach(spec, "updating " + ", ".join(drift), events)

    fields = compute_fields(view)
    message = f"{spec.batch_account_id} is attached as {spec.compute_name!r}"
    if op is not None or status.get("provisioningState") != "Succeeded" or \
            (cond.get(status.get("conditions"), "Ready") or {}).get("status") != "True":
        events.append(Event("Normal", "Attached", message))
    return Decision(Action.NONE, {**fields, "operation": None}, cond.ready("Attached", message),
                    events)


def decide_detach(target_id: str | None, policy: str, owner: Owner, status: Mapping[str, Any],
                  observed: Observed) -> Decision:
    """Next step for a resource being deleted: detach what we own, then release."""
    if policy == "Orphan":
        return Decision(Action.RELEASE, events=[Event(
            "Normal", "Orphaned", f"deletionPolicy Orphan: {target_id or 'the compute'} stays "
            "attached")])
    view = observed.compute
    if target_id is None or view is None:
        return Decision(Action.RELEASE, events=[Event(
            "Normal", "Detached", f"{target_id or 'nothing'} is no longer attached")])
    if _owned_by(view, owner) is not True or view.compute_type != "Batch":
        # Our tags alone are not enough: a compute of another type under the name is not the
        # attachment this resource made, whatever its tags say.
        return Decision(Action.RELEASE, events=[Event(
            "Normal", "Detached", f"left {_desc(view)} in place: this resource does not own it")])
    op = status.get("operation") if isinstance(status.get("operation"), Mapping) else None
    if view.provisioning_state in ("Creating", "Updating", "Deleting"):
        return Decision(Action.WAIT)  # let the running operation finish, then detach
    if op is not None and op.get("kind") == "Detach":
        pending = _pending(observed)
        if pending is not None:
            return pending
        result = _ended_badly(observed)
        if result is not None:
            failed = _failed(view, result, "Detach")
            failed.status["operation"] = None  # the next attempt sends a fresh DELETE
            return failed
    message = f"detaching {view.resource_id} from workspace compute {view.name!r}"
    return Decision(Action.DELETE, {"provisioningState": "Deleting"},
                    cond.progressing("Detaching", message),
                    [Event("Normal", "Detaching", message)], operation_kind="Detach")
