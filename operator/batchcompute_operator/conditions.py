"""Status conditions in metav1.Condition shape, read by kubectl wait, kstatus, Argo CD and Flux.

`Ready` is the answer users wait on; `Reconciling` and `Stalled` are the kstatus pair that
tell GitOps tools "still working" from "needs a human". Transition times move only when a
condition's status flips, so re-deriving the same conditions writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Condition:
    type: str
    status: Status
    reason: str
    message: str


def merge(previous: Sequence[Mapping[str, Any]] | None, wanted: Sequence[Condition],
          generation: int, now: str) -> list[dict[str, Any]]:
    """The conditions to store: `wanted`, keeping transition times that did not change."""
    old = {c.get("type"): c for c in previous or () if isinstance(c, Mapping)}
    merged = []
    for cond in wanted:
        prev = old.get(cond.type)
        changed = prev is None or prev.get("status") != cond.status
        merged.append({
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "observedGeneration": generation,
            "lastTransitionTime": now if changed or prev is None
            else prev.get("lastTransitionTime", now),
        })
    return merged


def ready(reason: str, message: str) -> list[Condition]:
    return [Condition("Ready", "True", reason, message),
            Condition("Reconciling", "False", reason, message),
            Condition("Stalled", "False", reason, message)]


def progressing(reason: str, message: str) -> list[Condition]:
    return [Condition("Ready", "False", reason, message),
            Condition("Reconciling", "True", reason, message),
            Condition("Stalled", "False", reason, message)]


def stalled(reason: str, message: str) -> list[Condition]:
    return [Condition("Ready", "False", reason, message),
            Condition("Reconciling", "False", reason, message),
            Condition("Stalled", "True", reason, message)]


def get(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for cond in conditions or ():
        if isinstance(cond, Mapping) and cond.get("type") == type_:
            return cond
    return None
