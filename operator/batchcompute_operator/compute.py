"""What ARM tells us about a compute and an operation, parsed defensively.

ARM bodies are input like any other: a field may be missing, of the wrong type, or carry a
state we do not know. Parsing never raises; oddities become `None` or an "Unknown" state
that the reconcile step treats as "not converged, look again later".
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

KNOWN_STATES = {"Unknown", "Updating", "Creating", "Deleting", "Succeeded", "Failed", "Canceled"}
TERMINAL_OPERATION = {"Succeeded", "Failed", "Canceled"}


@dataclass(frozen=True, slots=True)
class ArmErrorDetail:
    code: str
    message: str

    def as_status(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class ComputeView:
    """The parts of an ARM compute the operator decides on (SDK v1 `serialize()` fields).

    A workspace's LIST is kept as these while anything in it is in flight, so strings that
    many computes repeat (types, states, locations, Batch accounts, tag names) are interned.
    """

    id: str
    name: str
    compute_type: str
    resource_id: str | None
    provisioning_state: str
    provisioning_errors: tuple[ArmErrorDetail, ...] = ()
    compute_location: str | None = None
    location: str | None = None
    description: str | None = None
    is_attached: bool | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _shared(value: Any) -> str | None:
    return sys.intern(value) if isinstance(value, str) else None


def parse_error(raw: Any) -> ArmErrorDetail | None:
    if not isinstance(raw, Mapping):
        return None
    inner = raw.get("error") if isinstance(raw.get("error"), Mapping) else raw
    assert isinstance(inner, Mapping)
    if isinstance(inner.get("error"), Mapping):  # older API versions nest once more
        inner = inner["error"]
    code, message = _str(inner.get("code")), _str(inner.get("message"))
    if code is None and message is None:
        return None
    return ArmErrorDetail(code or "Unknown", message or "")


def parse_compute(raw: Any) -> ComputeView | None:
    """None when the body is not recognisably a compute."""
    if not isinstance(raw, Mapping):
        return None
    props = raw.get("properties")
    props = props if isinstance(props, Mapping) else {}
    name = _str(raw.get("name"))
    if name is None:
        return None
    state = _str(props.get("provisioningState")) or "Unknown"
    errors_raw = props.get("provisioningErrors")
    errors = tuple(
        e for e in (parse_error(x) for x in (errors_raw if isinstance(errors_raw, list) else []))
        if e is not None
    )
    tags_raw = raw.get("tags")
    tags = {sys.intern(k): sys.intern(v) for k, v in tags_raw.items()
            if isinstance(k, str) and isinstance(v, str)} if isinstance(tags_raw, Mapping) else {}
    attached = props.get("isAttachedCompute")
    return ComputeView(
        id=_str(raw.get("id")) or "",
        name=name,
        compute_type=_shared(props.get("computeType")) or "Unknown",
        resource_id=_shared(props.get("resourceId")),
        provisioning_state=sys.intern(state) if state in KNOWN_STATES else "Unknown",
        provisioning_errors=errors,
        compute_location=_shared(props.get("computeLocation")),
        location=_shared(raw.get("location")),
        description=_str(props.get("description")),
        is_attached=attached if isinstance(attached, bool) else None,
        tags=tags,
    )


@dataclass(frozen=True)
class OperationStatus:
    status: str  # InProgress, Succeeded, Failed, Canceled, or Unknown
    error: ArmErrorDetail | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_OPERATION


def parse_operation(raw: Any) -> OperationStatus:
    if not isinstance(raw, Mapping):
        return OperationStatus("Unknown")
    status = _str(raw.get("status")) or "Unknown"
    return OperationStatus(status, parse_error(raw.get("error")) if raw.get("error") else None)
