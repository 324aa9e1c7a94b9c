"""GitOps health, live: kstatus and Argo CD's verdict at every state a watch stream shows.

Argo CD and Flux judge an attachment by reading it from a watch, so what matters is every
state the stream delivers, not only the final one. Each test runs the operator against the
real kube-apiserver and the ARM emulator (300 ms per ARM call, 2 s operations, so the states
in between are visible), watches one resource from before its creation until it is gone, and
applies to every event both readers in tests/gitops_health.py: kstatus (Flux, `kubectl wait`,
cli-utils) and deploy/argocd/health.lua in a real Lua runtime. It asserts:

- kstatus never says Current unless Ready=True for the current generation, except for the
  events before the operator's first status write: an object with no status at all is
  Current to kstatus whatever anyone does. The operator keeps that window short by writing
  observedGeneration with Reconciling=True before its first ARM call; the test checks that
  the first status reaches the watch within FIRST_WRITE_WITHIN seconds of the create call and
  that the emulator answered no ARM request of this workspace before then. The same holds for
  an edit: its acknowledgement comes before the PUT that carries it out;
- kstatus says Failed and Argo CD Degraded, with the Stalled condition's message, exactly
  when Stalled=True; Argo CD says Healthy exactly when Ready=True for the current generation,
  and Progressing while attaching, while the status is older than the generation, and
  throughout a deletion (kstatus: Terminating);
- the sequence of distinct states each scenario goes through, with both verdicts;
- a permanent failure stays Stalled while the operator retries it quietly: no flapping
  between Degraded and Progressing;
- the unit tests' fixtures (tests/unit/fixtures/statuses/) have the shape of the states the
  operator really wrote. BCO_REFRESH_STATUS_FIXTURES=1 rewrites them from this recording.

Each test prints its timeline (`pytest -s` shows it) and keeps it as JSON in its tmp_path.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from operator_proc import Attachments, Workspace
from status_fixtures import SUBSCRIPTION, as_fixture, load_fixture, status_shape, write_fixture
from status_watch import Seen, StatusWatch
from tests.gitops_health import argocd_health, kstatus
from waiting import wait_for

ARM_LATENCY_MS = 300
OPERATION_SECONDS = 2
FIRST_WRITE_WITHIN = 2.0  # seconds from the create (or edit) call to its first status write
SCENARIO_TIMEOUT = 30.0
REFRESH = os.environ.get("BCO_REFRESH_STATUS_FIXTURES") == "1"

NO_STATUS = "Waiting for the operator to observe the resource"
ARM_FIELDS = ("provisioningState", "clusterResourceId", "computeLocation", "isAttachedCompute")

# (state, kstatus, Argo CD health, the fixture that stands for it), in the order the watch
# shows them; consecutive events in the same state count once.
LIFECYCLE = [
    ("no status", "Current", "Progressing", "created-no-status"),
    ("Reconciling: Attaching", "InProgress", "Progressing", "observed-before-arm"),
    ("Ready: Attached", "Current", "Healthy", "attached"),
    ("generation 2 not observed", "InProgress", "Progressing", "edited-not-yet-observed"),
    ("Reconciling: Updating", "InProgress", "Progressing", "edited-updating"),
    ("Ready: Attached", "Current", "Healthy", "edited-attached"),
    ("deleting, generation 3 not observed", "Terminating", "Progressing",
     "deleting-not-yet-observed"),
    ("deleting, Reconciling: Detaching", "Terminating", "Progressing", "deleting-detaching"),
]
FAILURE = [
    ("no status", "Current", "Progressing", None),
    ("Reconciling: Attaching", "InProgress", "Progressing", None),
    ("Stalled: ResourceNotFound", "Failed", "Degraded", "stalled-resource-not-found"),
    ("deleting, generation 2 not observed", "Terminating", "Progressing", None),
    ("deleting, Reconciling: Detaching", "Terminating", "Progressing", None),
]


@pytest.fixture
def slow_arm(emulator: Any) -> Iterator[Any]:
    """ARM as the issue measured it: 300 ms per call, operations that take 2 s."""
    emulator.set_config({"latency_ms": ARM_LATENCY_MS, "operation_seconds": OPERATION_SECONDS})
    try:
        yield emulator
    finally:
        emulator.set_config({"latency_ms": 0, "operation_seconds": 1})


# -- reading one state -------------------------------------------------------------------------


def state_of(seen: Seen) -> str:
    """A state as the status contract names it: no status, generation not observed, or the
    one condition of Ready/Reconciling/Stalled that is True, with its reason."""
    prefix = "deleting, " if seen.deleting else ""
    if not seen.operator_status:
        return f"{prefix}no status"
    if seen.observed_generation != seen.generation:
        return f"{prefix}generation {seen.generation} not observed"
    true = [c for c in seen.status.get("conditions") or () if c.get("status") == "True"]
    return prefix + ", ".join(f"{c['type']}: {c['reason']}" for c in true)


def check_verdicts(seen: Seen, before_first_write: bool) -> tuple[str, str, str]:
    """Assert what kstatus and Argo CD must make of one state; returns (state, kstatus, Argo)."""
    obj, state = seen.obj, state_of(seen)
    ks = kstatus(obj)
    argo, message = argocd_health(obj)
    where = f"{seen.type} rv {seen.resource_version} ({state}): kstatus {ks}, Argo CD {argo}"
    if ks == "Current":  # the promise Flux's `wait: true` rests on
        assert seen.is_true("Ready") or (not seen.operator_status and before_first_write), where
    if argo == "Healthy":
        assert seen.is_true("Ready") and not seen.deleting, where

    if seen.deleting:
        assert (ks, argo) == ("Terminating", "Progressing"), where
        reconciling = seen.condition("Reconciling")
        if seen.observed_generation == seen.generation:
            assert seen.is_true("Reconciling") and reconciling is not None, where
            assert reconciling["reason"] == "Detaching", where
            assert message == f"Being deleted: {reconciling['message']}", where
        else:
            assert message == ("Being deleted: waiting for the operator to detach the compute "
                               "and remove its finalizer"), where
        return state, ks, argo
    if not seen.operator_status:
        assert before_first_write, f"the status went away: {where}"
        assert (ks, argo, message) == ("Current", "Progressing", NO_STATUS), where
        return state, ks, argo
    if seen.observed_generation != seen.generation:
        assert (ks, argo) == ("InProgress", "Progressing"), where
        assert message == (f"Waiting for the operator to observe generation {seen.generation} "
                           f"(status describes generation {seen.observed_generation})"), where
        return state, ks, argo

    # The operator's status for the current generation: all three conditions, stamped with
    # it, exactly one of them True.
    conditions = seen.status.get("conditions") or []
    assert sorted(c["type"] for c in conditions) == ["Ready", "Reconciling", "Stalled"], where
    assert all(c.get("observedGeneration") == seen.generation for c in conditions), where
    true = [c for c in conditions if c["status"] == "True"]
    assert len(true) == 1, where
    expected = {"Stalled": ("Failed", "Degraded"), "Reconciling": ("InProgress", "Progressing"),
                "Ready": ("Current", "Healthy")}[true[0]["type"]]
    assert (ks, argo) == expected, where
    assert message == true[0]["message"], where
    return state, ks, argo


def verdicts(states: Sequence[Seen]) -> list[tuple[str, str, str]]:
    """Every state's verdicts checked; the distinct ones in order (repeats counted once)."""
    first_write = next((i for i, s in enumerate(states) if s.operator_status), len(states))
    seen: list[tuple[str, str, str]] = []
    for index, state in enumerate(states):
        verdict = check_verdicts(state, before_first_write=index < first_write)
        if not seen or seen[-1] != verdict:
            seen.append(verdict)
    return seen


def firsts(states: Sequence[Seen]) -> list[Seen]:
    """The first event of each run of events in the same state."""
    out: list[Seen] = []
    for state in states:
        if not out or state_of(out[-1]) != state_of(state) or \
                out[-1].generation != state.generation:
            out.append(state)
    return out


# -- recording ---------------------------------------------------------------------------------


def timeline(title: str, states: Sequence[Seen], start: float) -> str:
    lines = [f"{title}:", f"  {'t (s)':>6}  {'event':<8} gen obs  {'kstatus':<11} "
                          f"{'Argo CD':<11} state / Argo CD message"]
    for seen in states:
        argo, message = argocd_health(seen.obj)
        obs = seen.observed_generation
        lines.append(f"  {seen.at - start:6.2f}  {seen.type:<8} {seen.generation:>3} "
                     f"{obs if obs is not None else '-':>3}  {kstatus(seen.obj):<11} "
                     f"{argo:<11} {state_of(seen)} / {message[:70]}")
    return "\n".join(lines)


def record(tmp_path: Path, name: str, states: Sequence[Seen], start: float) -> None:
    (tmp_path / f"watch-{name}.json").write_text(json.dumps(
        [{"t": round(s.at - start, 3), "type": s.type, "object": s.obj,
          "kstatus": kstatus(s.obj), "argocd": argocd_health(s.obj)} for s in states],
        indent=1))
    print(timeline(name, states, start))


def fixture_names(workspace: Workspace) -> dict[str, str]:
    return {workspace.subscription: SUBSCRIPTION, workspace.resource_group: "ml-rg",
            workspace.name: "ml-ws", workspace.batch_resource_group: "batch-rg",
            workspace.account: "mybatchacct"}


def check_fixtures(expected: Sequence[tuple[str, str, str, str | None]],
                   states: Sequence[Seen], workspace: Workspace) -> None:
    """Each fixture named in `expected` has the shape of the live state it stands for."""
    live = firsts(states)
    assert len(live) == len(expected)
    mismatched = []
    for seen, (_, _, _, fixture) in zip(live, expected, strict=True):
        if fixture is None:
            continue
        if REFRESH:
            write_fixture(fixture, as_fixture(seen.obj, fixture_names(workspace)))
            continue
        try:
            have: dict[str, Any] | str = status_shape(load_fixture(fixture))
        except FileNotFoundError:
            have = "missing"
        want = status_shape(seen.obj)
        if have != want:
            mismatched.append(f"{fixture}.json: {have}\n  live: {want}")
    assert not mismatched, ("fixtures that no longer look like the operator's statuses "
                            "(BCO_REFRESH_STATUS_FIXTURES=1 rewrites them from the live "
                            "recording):\n" + "\n".join(mismatched))


# -- ARM, seen from the emulator ---------------------------------------------------------------


def answered(call: dict[str, Any]) -> float:
    """When the emulator sent its answer (wall clock, as the watch's events are stamped)."""
    return float(call["time"]) + float(call["durationMs"]) / 1000


def assert_acknowledged_before_arm(first: Seen, start: float, calls: list[dict[str, Any]],
                                   what: str) -> None:
    """`first` is the first status for its generation: quick, and ahead of the ARM calls.

    A call the operator made before writing would have been answered before the write was
    sent, so before its event arrived here. (Calls are answered at least ARM_LATENCY_MS after
    they arrive, which covers the watch's own delivery delay.)
    """
    took = first.at - start
    assert took < FIRST_WRITE_WITHIN, f"{what}: first status {took:.2f}s after the request"
    early = [f"{c['method']} {c['path']}" for c in calls if answered(c) <= first.at]
    assert not early, f"{what}: ARM answered these before the first status arrived: {early}"


# -- the scenarios -----------------------------------------------------------------------------


def test_attach_edit_delete_health_at_every_state(
        start_operator: Any, attachments: Attachments, workspace: Workspace, slow_arm: Any,
        kube: Any, namespace: str, tmp_path: Path) -> None:
    emulator = slow_arm
    start_operator()
    seq = emulator.requests()[-1]["seq"] if emulator.requests() else 0
    with StatusWatch(kube, namespace) as watch:
        # (a) create -> Ready
        created = time.time()
        attachments.create("mybatch", workspace.spec(tags={"team": "ml"}))
        watch.wait("mybatch", lambda s: s.is_true("Ready"), timeout=SCENARIO_TIMEOUT,
                   message="Ready=True")
        # (c) a spec edit of the attached resource -> Ready again
        edited = time.time()
        attachments.patch_spec("mybatch", {"tags": {"team": "ml", "env": "prod"}})
        watch.wait("mybatch", lambda s: s.generation == 2 and s.is_true("Ready"),
                   timeout=SCENARIO_TIMEOUT, message="Ready=True for generation 2")
        # (d) a deletion -> gone
        deleted = time.time()
        attachments.delete("mybatch")
        watch.wait("mybatch", lambda s: s.type == "DELETED", timeout=SCENARIO_TIMEOUT,
                   message="DELETED")
        states = watch.states("mybatch")
    record(tmp_path, "attach-edit-delete", states, created)
    calls = Workspace.calls(emulator, seq)

    assert states[0].type == "ADDED" and not states[0].operator_status
    assert verdicts(states) == [row[:3] for row in LIFECYCLE]

    # The first write for each generation comes first, and soon.
    first = next(s for s in states if s.operator_status)
    assert not [f for f in ARM_FIELDS if f in first.status], first.status  # nothing from ARM
    assert_acknowledged_before_arm(first, created, calls, "create")
    updating = next(s for s in states if s.generation == 2 and s.observed_generation == 2)
    assert state_of(updating) == "Reconciling: Updating"
    put_2 = [c for c in calls if c["method"] == "PUT" and c["time"] > edited]
    assert len(put_2) == 1, put_2
    assert_acknowledged_before_arm(updating, edited, put_2, "edit")
    detaching = next(s for s in states if s.deleting and s.observed_generation == s.generation)
    deletes = [c for c in calls if c["method"] == "DELETE" and c["time"] > deleted]
    assert len(deletes) == 1, deletes
    assert answered(deletes[0]) > detaching.at, "the DELETE was answered before Detaching"

    check_fixtures(LIFECYCLE, states, workspace)


def test_permanent_failure_health_at_every_state(
        start_operator: Any, attachments: Attachments, workspace: Workspace, slow_arm: Any,
        kube: Any, namespace: str, tmp_path: Path) -> None:
    emulator = slow_arm
    start_operator()
    seq = emulator.requests()[-1]["seq"] if emulator.requests() else 0
    spec = workspace.spec()
    spec["batchAccount"] = {"resourceGroup": workspace.batch_resource_group,
                            "accountName": "nosuchacct"}
    compute = workspace.compute_path("mybatch").lower()
    with StatusWatch(kube, namespace) as watch:
        # (b) create -> a permanent failure: ARM's attach operation ends ResourceNotFound
        created = time.time()
        attachments.create("mybatch", spec)
        stalled = watch.wait("mybatch", lambda s: s.is_true("Stalled"),
                             timeout=SCENARIO_TIMEOUT, message="Stalled=True")

        # The operator retries with backoff, quietly: wait until a retry's operation has
        # ended and the operator has listed the workspace twice since (the first LIST shows
        # it the outcome, the second gives that decision a poll interval to be written), then
        # nothing may have moved.
        def puts() -> list[dict[str, Any]]:
            return [c for c in Workspace.calls(emulator, seq)
                    if c["method"] == "PUT" and c["path"].lower() == compute]

        retry = wait_for(lambda: puts()[1:], timeout=SCENARIO_TIMEOUT,
                         message="the operator's retry of the failed attach")[0]
        ended = answered(retry) + OPERATION_SECONDS
        wait_for(lambda: len([c for c in Workspace.calls(emulator, seq)
                              if c["method"] == "GET" and c["path"].lower().endswith("/computes")
                              and answered(c) > ended]) >= 2, timeout=SCENARIO_TIMEOUT,
                 message="two LISTs after the retried operation ended")
        quiet = watch.states("mybatch")
        assert quiet[-1].resource_version == stalled.resource_version, \
            f"the status moved while the failed attach was retried: {state_of(quiet[-1])}"

        # (d) deleting the stalled resource detaches what the failed attach left
        attachments.delete("mybatch")
        watch.wait("mybatch", lambda s: s.type == "DELETED", timeout=SCENARIO_TIMEOUT,
                   message="DELETED")
        states = watch.states("mybatch")
    record(tmp_path, "permanent-failure", states, created)

    assert verdicts(states) == [row[:3] for row in FAILURE]
    first = next(s for s in states if s.operator_status)
    assert_acknowledged_before_arm(first, created, Workspace.calls(emulator, seq), "create")
    # Argo CD shows what to fix, and alerts can group by ARM's error code.
    stalled_cond = stalled.condition("Stalled")
    assert stalled_cond is not None and stalled_cond["reason"] == "ResourceNotFound"
    assert argocd_health(stalled.obj) == ("Degraded", stalled_cond["message"])
    assert "nosuchacct" in stalled_cond["message"]
    assert "check spec.batchAccount" in stalled_cond["message"]
    assert [e["code"] for e in stalled.status["provisioningErrors"]] == ["ResourceNotFound"]

    check_fixtures(FAILURE, states, workspace)
