"""The part of `.status` the operator owns, held compactly, and the diff that decides a write.

The engine keeps one `Recorded` per resource instead of the resource's body: a few strings and
small tuples, so ten thousand idle attachments cost little memory. Decisions say what the
status should become; `Recorded.updated` applies that, and `Recorded.patch_to` yields only the
fields that differ, so re-deriving the same status writes nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from batchcompute_operator.conditions import Condition

# Field names in `.status`, in the order they are written and documented.
FIELDS = ("observedGeneration", "provisioningState", "provisioningErrors", "computeId",
          "computeName", "clusterResourceId", "computeLocation", "isAttachedCompute",
          "operation", "conditions")


@dataclass(frozen=True, slots=True)
class Cond:
    """One stored condition (metav1.Condition shape)."""

    type: str
    status: str
    reason: str
    message: str
    generation: int | None
    since: str  # lastTransitionTime

    def as_json(self) -> dict[str, Any]:
        return {"type": self.type, "status": self.status, "reason": self.reason,
                "message": self.message, "observedGeneration": self.generation,
                "lastTransitionTime": self.since}


@dataclass(frozen=True, slots=True)
class Operation:
    """What the operator is carrying out for this resource, and since when."""

    kind: str  # Attach | Detach
    since: str

    def as_json(self) -> dict[str, str]:
        return {"kind": self.kind, "since": self.since}


Errors = tuple[tuple[str, str], ...]  # (code, message) pairs


@dataclass(frozen=True, slots=True)
class Recorded:
    """The operator-owned status fields of one resource."""

    observed_generation: int | None = None
    provisioning_state: str | None = None
    provisioning_errors: Errors | None = None  # None: absent; (): an empty list
    compute_id: str | None = None
    compute_name: str | None = None
    cluster_resource_id: str | None = None
    compute_location: str | None = None
    is_attached: bool | None = None
    operation: Operation | None = None
    conditions: tuple[Cond, ...] = ()

    # -- reading -------------------------------------------------------------------------------

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> Recorded:
        """Parse defensively: status is user-writable, so odd values read as absent."""
        if not isinstance(status, Mapping):
            return EMPTY
        gen = status.get("observedGeneration")
        return cls(
            observed_generation=gen if isinstance(gen, int) else None,
            provisioning_state=_str(status.get("provisioningState")),
            provisioning_errors=_errors(status.get("provisioningErrors"))
            if isinstance(status.get("provisioningErrors"), list) else None,
            compute_id=_str(status.get("computeId")),
            compute_name=_str(status.get("computeName")),
            cluster_resource_id=_str(status.get("clusterResourceId")),
            compute_location=_str(status.get("computeLocation")),
            is_attached=status.get("isAttachedCompute")
            if isinstance(status.get("isAttachedCompute"), bool) else None,
            operation=_operation(status.get("operation")),
            conditions=_conditions(status.get("conditions")),
        )

    def condition(self, type_: str) -> Cond | None:
        for cond in self.conditions:
            if cond.type == type_:
                return cond
        return None

    def is_true(self, type_: str, generation: int | None = None) -> bool:
        cond = self.condition(type_)
        return cond is not None and cond.status == "True" and \
            (generation is None or cond.generation == generation)

    @property
    def error_codes(self) -> tuple[str, ...]:
        return tuple(code for code, _ in self.provisioning_errors or ())

    # -- changing ------------------------------------------------------------------------------

    def updated(self, fields: Mapping[str, Any] | None, conditions: Sequence[Condition],
                generation: int, now: str) -> Recorded:
        """This status with `fields` (JSON names; None clears) and `conditions` applied.

        Conditions keep their transition time unless their status flips; any condition update
        also records `generation` as observed, which is what kstatus reads first.
        """
        new = self
        if fields:
            new = replace(new, **{_ATTR[k]: _coerce(k, v, now, self) for k, v in fields.items()})
        if conditions:
            old = {c.type: c for c in self.conditions}
            merged = []
            for c in conditions:
                prev = old.get(c.type)
                since = prev.since if prev is not None and prev.status == c.status else now
                merged.append(Cond(c.type, c.status, c.reason, c.message, generation, since))
            kept = [c for c in self.conditions if c.type not in {m.type for m in merged}]
            new = replace(new, conditions=tuple(merged + kept), observed_generation=generation)
        return new

    def patch_to(self, other: Recorded) -> dict[str, Any]:
        """The merge patch (JSON names) that turns this status into `other`; empty if equal."""
        patch: dict[str, Any] = {}
        for name in FIELDS:
            attr = _ATTR[name]
            if getattr(self, attr) != getattr(other, attr):
                patch[name] = other.as_json_field(name)
        return patch

    def as_json_field(self, name: str) -> Any:
        value = getattr(self, _ATTR[name])
        if name == "provisioningErrors":
            return None if value is None else [{"code": c, "message": m} for c, m in value]
        if name == "conditions":
            return [c.as_json() for c in value]
        if name == "operation":
            return value.as_json() if value is not None else None
        return value

    def as_json(self) -> dict[str, Any]:
        return {name: self.as_json_field(name) for name in FIELDS
                if getattr(self, _ATTR[name]) is not None}


EMPTY = Recorded()

_ATTR = {
    "observedGeneration": "observed_generation",
    "provisioningState": "provisioning_state",
    "provisioningErrors": "provisioning_errors",
    "computeId": "compute_id",
    "computeName": "compute_name",
    "clusterResourceId": "cluster_resource_id",
    "computeLocation": "compute_location",
    "isAttachedCompute": "is_attached",
    "operation": "operation",
    "conditions": "conditions",
}


def _coerce(name: str, value: Any, now: str, current: Recorded) -> Any:
    """Decision values (JSON-shaped) into the compact form."""
    if name == "provisioningErrors":
        return None if value is None else _errors(value)
    if name == "operation":
        if value is None:
            return None
        kind = str(value)
        prev = current.operation
        return prev if prev is not None and prev.kind == kind else Operation(kind, now)
    if name == "conditions":
        raise ValueError("conditions are set through `conditions`, not as a field")
    return value


def _str(value: Any) -> str | None:
    """Strings are kept interned: ten thousand records repeat the same states, locations,
    reasons and timestamps, and each JSON parse would otherwise hold its own copy."""
    return sys.intern(value) if isinstance(value, str) else None


def _text(value: Any, default: str = "") -> str:
    return sys.intern(str(value or default))


def _errors(raw: Any) -> Errors:
    if not isinstance(raw, Iterable) or isinstance(raw, str | bytes | Mapping):
        return ()
    out = []
    for item in raw:
        if isinstance(item, Mapping):
            out.append((str(item.get("code") or ""), str(item.get("message") or "")))
        elif isinstance(item, tuple) and len(item) == 2:
            out.append((str(item[0]), str(item[1])))
    return tuple(out)


def _operation(raw: Any) -> Operation | None:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("kind"), str):
        return None
    return Operation(sys.intern(raw["kind"]), _text(raw.get("since")))


def _conditions(raw: Any) -> tuple[Cond, ...]:
    if not isinstance(raw, list):
        return ()
    out: list[Cond] = []
    message: str | None = None
    for item in raw:
        if not isinstance(item, Mapping) or not isinstance(item.get("type"), str):
            continue
        text = str(item.get("message") or "")
        # The three conditions usually carry one message: keep one string for all of them.
        if text == message:
            text = message
        message = text
        gen = item.get("observedGeneration")
        out.append(Cond(sys.intern(item["type"]), _text(item.get("status"), "Unknown"),
                        _text(item.get("reason")), text,
                        gen if isinstance(gen, int) else None,
                        _text(item.get("lastTransitionTime"))))
    return tuple(out)
