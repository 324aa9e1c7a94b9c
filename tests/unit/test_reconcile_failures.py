"""Permanent attach failures: retried quietly while the error stays the same, reported once
when it changes (issue 15, item 5)."""

from __future__ import annotations

from test_reconcile import acked, apply, attach, view

from batchcompute_operator.compute import ArmErrorDetail
from batchcompute_operator.reconcile import Action


def test_a_quiet_retry_that_fails_differently_is_reported_once() -> None:
    missing = view("Failed", provisioning_errors=(
        ArmErrorDetail("ResourceNotFound", "no such Batch account"),))
    stalled = apply(acked(), attach(acked(), missing))
    # The same error after a retry (even worded differently): another quiet retry.
    reworded = view("Failed", provisioning_errors=(
        ArmErrorDetail("ResourceNotFound", "still no such Batch account"),))
    again = attach(stalled, reworded)
    assert again.action is Action.PUT and again.status is None and again.events == ()
    # Another error: reported, with one event, and backed off as a failure.
    locked = view("Failed", provisioning_errors=(
        ArmErrorDetail("BatchAccountLocked", "the account is locked"),))
    changed = attach(stalled, locked, retry_due=False)
    assert changed.action is Action.NONE and changed.failed
    assert [e.reason for e in changed.events] == ["AttachFailed"]
    now = apply(stalled, changed)
    assert now.error_codes == ("BatchAccountLocked",)
    assert now.condition("Stalled").reason == "BatchAccountLocked"  # type: ignore[union-attr]
    # From then on that error is the one already reported: quiet again.
    quiet = attach(now, locked)
    assert quiet.action is Action.PUT and quiet.events == ()
    # A failed compute without error details says nothing new.
    bare = attach(now, view("Failed"))
    assert bare.action is Action.PUT and bare.events == ()
