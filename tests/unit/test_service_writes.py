"""Our own status writes, remembered until the watch stream shows them back."""

from __future__ import annotations

from typing import Any

from batchcompute_operator import conditions as cond
from batchcompute_operator.config import Settings
from batchcompute_operator.reconcile import Action, Decision
from batchcompute_operator.service import AttachmentService, ResourceView


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def view(status: dict[str, Any]) -> ResourceView:
    return ResourceView("ns", "name", "uid-1", 1, {}, status)


def service(clock: Clock) -> AttachmentService:
    return AttachmentService(Settings(), None, None, clock=clock)  # type: ignore[arg-type]


def test_a_stale_body_is_seen_with_our_last_write_and_no_write_repeats() -> None:
    clock = Clock()
    svc = service(clock)
    decision = Decision(Action.NONE, {"provisioningState": "Succeeded", "operation": None},
                        cond.ready("Attached", "ok"))
    stale = view({"provisioningState": "Creating", "operation": {"kind": "Attach"}})
    first = svc._outcome(stale, decision)
    assert first.status_patch["provisioningState"] == "Succeeded"
    # The next tick is handed the same stale body: it must not write (or post) again.
    seen = svc._with_own_writes(stale)
    assert seen.status["provisioningState"] == "Succeeded"
    assert "operation" not in seen.status
    again = svc._outcome(seen, Decision(Action.NONE, dict(decision.status),
                                        list(decision.conditions), list(decision.events)))
    assert again.status_patch == {}


def test_caught_up_or_long_lost_writes_are_forgotten() -> None:
    clock = Clock()
    svc = service(clock)
    svc._outcome(view({}), Decision(Action.NONE, {"provisioningState": "Succeeded"}))
    caught_up = view({"provisioningState": "Succeeded", "lastSyncTime": "x"})
    assert svc._with_own_writes(caught_up) is caught_up
    svc._outcome(view({}), Decision(Action.NONE, {"provisioningState": "Failed"}))
    clock.now += 31
    lost = view({"provisioningState": "Creating"})
    assert svc._with_own_writes(lost) is lost
