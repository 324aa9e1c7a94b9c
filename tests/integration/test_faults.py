"""Fault injection: ARM throttling, 5xx, dropped and stalled connections, failed and canceled
operations, expired operation URLs, operator crashes, credential failures, mass deletion
while attaches are in flight, and a foreign operation URL.

Each test runs its own operator against the real kube-apiserver and the shared ARM emulator,
injects one kind of fault through the emulator's admin API, and checks what a user sees
(status, conditions, events) and, in the emulator's request log, exactly which ARM calls were
made: every test ends in the declared state with exactly one effective write per compute and
per direction, unless the fault itself makes a second one legitimate (then the test says why).

A write counts as effective when the emulator's handler processed it: a 2xx answer that no
injected `status` fault produced. A request cut by `close`, or abandoned by the client during
a `stall`, has no status and was never processed; a request answered by a `status` fault
never reached the handler either.

The emulator is shared by the whole session: the autouse fixture below clears faults and
restores the settings after every test, whatever its outcome.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from observing import brief, last_seq, writes_in
from operator_proc import Attachments, Workspace
from waiting import wait_for

EFFECTIVE = (200, 201, 202, 204)
RETRY_AFTER = 2  # seconds, on injected 429s: longer than the client's first two backoffs
THROTTLE_WAIT = 45  # the client retries a throttled call 6 times, backing off up to ~24 s


pytestmark = pytest.mark.usefixtures("restore_emulator")  # it changes the shared emulator


# -- helpers ---------------------------------------------------------------------------------


def set_identity(emulator: Any, **body: Any) -> Any:
    return emulator._call("POST", "/_admin/identity", json=body).json()


def compute_regex(ws: Workspace, name: str) -> str:
    return f"/workspaces/{re.escape(ws.name)}/computes/{re.escape(name)}$"


def list_regex(ws: Workspace) -> str:
    return f"/workspaces/{re.escape(ws.name)}/computes$"


def workspace_regex(ws: Workspace) -> str:
    return f"/workspaces/{re.escape(ws.name)}$"


def effective(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in entries if c["status"] in EFFECTIVE and c["fault"] != "status"]


def assert_one_effective(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Exactly one write took effect and nothing was sent for this compute after it."""
    done = effective(entries)
    assert len(done) == 1, brief(entries)
    assert entries[-1] is done[0], f"a write after the effective one: {brief(entries)}"
    return done[0]


def assert_waited_retry_after(calls: list[dict[str, Any]], retry_after: float,
                              statuses: tuple[int, ...] = (429,)) -> int:
    """After every answer with Retry-After (429 unless told), the operator's next request to
    that subscription came no sooner than Retry-After (the emulator's timestamps, taken when
    each request arrived). Returns how many such answers were followed by a request."""
    checked = 0
    for i, call in enumerate(calls):
        if call["status"] not in statuses:
            continue
        sub = str(call["subscription"]).lower()
        following = [c for c in calls[i + 1:] if str(c["subscription"]).lower() == sub]
        if not following:
            continue
        gap = following[0]["time"] - call["time"]
        assert gap >= retry_after - 0.01, (
            f"request {following[0]['seq']} ({following[0]['method']} {following[0]['target']}) "
            f"came {gap:.3f}s after the {call['status']} ({call['method']} {call['target']}) "
            f"of request {call['seq']}, Retry-After was "
            f"{retry_after}s")
        checked += 1
    return checked


def reason_seen(attachments: Attachments, name: str, reason: str,
                types: tuple[str, ...] = ("Ready", "Reconciling", "Stalled")) -> bool:
    if reason in attachments.reasons(name):
        return True
    return any(attachments.condition(name, t).get("reason") == reason for t in types)


def wait_reason(attachments: Attachments, name: str, reason: str, timeout: float = 30) -> None:
    wait_for(lambda: reason_seen(attachments, name, reason), timeout=timeout,
             message=f"{name}: reason {reason} in a condition or an event")


def status_and_events(attachments: Attachments, name: str) -> str:
    obj = attachments.get(name) or {}
    return json.dumps(obj.get("status", {})) + json.dumps(attachments.events(name))


# -- 429: throttling -------------------------------------------------------------------------


def _attach_side_fault(step: str, ws: Workspace, name: str) -> dict[str, Any]:
    return {
        "put": {"method": "PUT", "path_regex": compute_regex(ws, name)},
        "list": {"method": "GET", "kind": "list", "path_regex": list_regex(ws)},
        "workspace": {"method": "GET", "kind": "workspace", "path_regex": workspace_regex(ws)},
    }[step]


@pytest.mark.parametrize("step", ["put", "list", "workspace"])
def test_throttled_attach_waits_retry_after_reports_throttled_and_converges(
        step: str, start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """Throttling that outlasts the client's own retries surfaces as reason Throttled; the
    operator never calls the subscription again before Retry-After, and once ARM lets it
    through the attach completes with one PUT."""
    mark = last_seq(emulator)
    start_operator()
    emulator.add_fault({**_attach_side_fault(step, workspace, "throttled"), "count": None,
                        "action": {"status": 429, "retry_after": RETRY_AFTER}})
    attachments.create("throttled", workspace.spec())
    wait_reason(attachments, "throttled", "Throttled", timeout=THROTTLE_WAIT)
    emulator.clear_faults()
    attachments.wait_condition("throttled", "True", reason="Attached", timeout=30)

    calls = Workspace.calls(emulator, mark)
    throttled = [c for c in calls if c["status"] == 429]
    assert len(throttled) >= 2, brief(calls)
    assert assert_waited_retry_after(calls, RETRY_AFTER) >= 1
    assert_one_effective(writes_in(calls, workspace, "throttled", "PUT"))
    assert writes_in(calls, workspace, "throttled", "DELETE") == []
    assert "throttled" in workspace.computes(emulator)
    print(f"{step}: {len(throttled)} answers 429 before Throttled was reported; "
          f"Reconciling={attachments.condition('throttled', 'Reconciling')}")


def test_throttled_detach_waits_retry_after_and_detaches_once(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    start_operator()
    attachments.create("slowdel", workspace.spec())
    attachments.wait_condition("slowdel", "True")
    mark = last_seq(emulator)
    emulator.add_fault({"method": "DELETE", "path_regex": compute_regex(workspace, "slowdel"),
                        "count": None, "action": {"status": 429, "retry_after": RETRY_AFTER}})
    attachments.delete("slowdel")
    wait_reason(attachments, "slowdel", "Throttled", timeout=THROTTLE_WAIT)
    assert attachments.get("slowdel") is not None  # the finalizer holds while detach waits
    emulator.clear_faults()
    attachments.wait_gone("slowdel", timeout=30)

    calls = Workspace.calls(emulator, mark)
    assert assert_waited_retry_after(calls, RETRY_AFTER) >= 1
    assert_one_effective(writes_in(calls, workspace, "slowdel", "DELETE"))
    assert writes_in(calls, workspace, "slowdel", "PUT") == []
    assert "slowdel" not in workspace.computes(emulator)


def test_throttled_operation_poll_waits_retry_after(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """The operation URL is read when the compute cannot tell the outcome: here a detach whose
    operation ARM canceled leaves the compute as it was. Throttling on that read is waited
    out; the operator then learns the detach was canceled and detaches again."""
    start_operator()
    attachments.create("opthrottle", workspace.spec())
    attachments.wait_condition("opthrottle", "True")
    mark = last_seq(emulator)
    emulator.add_fault({"method": "DELETE", "path_regex": compute_regex(workspace, "opthrottle"),
                        "action": {"operation_result": "Canceled"}})
    emulator.add_fault({"method": "GET", "kind": "operation", "count": None,
                        "action": {"status": 429, "retry_after": RETRY_AFTER}})
    attachments.delete("opthrottle")
    wait_reason(attachments, "opthrottle", "Throttled", timeout=THROTTLE_WAIT)
    emulator.clear_faults()
    attachments.wait_gone("opthrottle", timeout=40)

    calls = Workspace.calls(emulator, mark)
    polls = [c for c in calls if c["target"] == "operation"]
    assert [c for c in polls if c["status"] == 429], brief(calls)
    assert [c for c in polls if c["status"] == 200], "the operation was read once let through"
    assert assert_waited_retry_after(calls, RETRY_AFTER) >= 1
    deletes = writes_in(calls, workspace, "opthrottle", "DELETE")
    # Two detaches, both legitimate: the first one's operation was canceled by ARM.
    assert len(effective(deletes)) == 2 == len(deletes), brief(deletes)
    assert writes_in(calls, workspace, "opthrottle", "PUT") == []
    assert "DetachFailed" in attachments.reasons("opthrottle")  # events outlive the resource
    assert "opthrottle" not in workspace.computes(emulator)


def test_throttled_resync_keeps_a_ready_resource_ready(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """A settled attachment whose periodic LIST is throttled stays Ready (ARM still holds the
    compute); Reconciling tells the user why it is not being re-verified. The fault is held
    until the operator has given up on at least two reconcile rounds, i.e. also on the retry
    that follows the resync, and Ready is sampled the whole time. A repeated identical
    failure changes no status field and posts no second event, so the rounds are counted in
    the emulator's request log."""
    proc = start_operator()
    attachments.create("steady", workspace.spec())
    attachments.wait_condition("steady", "True", reason="Attached")
    ready_since = attachments.condition("steady")["lastTransitionTime"]
    mark = last_seq(emulator)
    emulator.add_fault({"method": "GET", "kind": "list", "path_regex": list_regex(workspace),
                        "count": None, "action": {"status": 429, "retry_after": 1}})
    flips: list[dict[str, Any]] = []

    def two_rounds_failed() -> bool:
        ready = attachments.condition("steady")
        if ready.get("status") != "True":
            flips.append(ready)
            return True  # stop waiting: the assertion below reports it
        # The client retries a throttled read 6 times: more than 6 answers 429 is 2 rounds.
        list_429 = [c for c in Workspace.calls(emulator, mark)
                    if c["target"] == "list" and c["status"] == 429]
        return len(list_429) > 6 and "listing computes failed" in proc.log()

    wait_for(two_rounds_failed, timeout=75, interval=0.1,
             message="two throttled reconcile rounds")
    reconciling = attachments.condition("steady", "Reconciling")
    emulator.clear_faults()
    assert not flips, f"Ready flipped while only the LIST was throttled: {flips[0]}"
    assert reconciling.get("reason") == "Throttled", reconciling
    assert "Throttled" in attachments.reasons("steady")
    wait_for(lambda: attachments.condition("steady", "Reconciling").get("status") == "False",
             timeout=30, message="Reconciling back to False")
    ready = attachments.condition("steady")
    assert ready["status"] == "True"
    assert ready["lastTransitionTime"] == ready_since
    calls = Workspace.calls(emulator, mark)
    assert writes_in(calls, workspace, "steady", "PUT") == []
    assert writes_in(calls, workspace, "steady", "DELETE") == []
    assert assert_waited_retry_after(calls, 1) >= 1


# -- 5xx, dropped connections, stalls ---------------------------------------------------------


def _step_fault(step: str, ws: Workspace, name: str) -> dict[str, Any]:
    if step == "delete":
        return {"method": "DELETE", "path_regex": compute_regex(ws, name)}
    return _attach_side_fault(step, ws, name)


STEP_FAULTS = [
    pytest.param(step, action, id=f"{step}-{label}")
    for step in ("workspace", "list", "put", "delete")
    for label, action in (("500", {"status": 500}), ("503", {"status": 503}),
                          ("reset", {"close": True}))
] + [
    pytest.param("put", {"status": 503, "retry_after": RETRY_AFTER}, id="put-503-retry-after"),
    pytest.param("delete", {"status": 503, "retry_after": RETRY_AFTER},
                 id="delete-503-retry-after"),
    pytest.param("put", {"stall_seconds": 3}, id="put-stall"),
    pytest.param("list", {"stall_seconds": 3}, id="list-stall"),
    pytest.param("list", {"status": 200, "raw": "not json"}, id="list-garbage-200"),
    pytest.param("put", {"status": 200, "raw": "not json"}, id="put-garbage-200"),
]


@pytest.mark.parametrize(("step", "action"), STEP_FAULTS)
def test_transient_failure_at_each_step_converges_with_one_effective_write(
        step: str, action: dict[str, Any], start_operator: Any, attachments: Attachments,
        workspace: Workspace, emulator: Any) -> None:
    """One failure at one step of attach or detach: reads are retried by the client, writes by
    the reconcile loop after a fresh LIST; either way the compute is attached once and
    detached once. A 200 whose body is not JSON counts as a failure too: for the PUT it
    carries no operation URL and no compute, so the operator must find out from the LIST."""
    stall = "stall_seconds" in action
    start_operator(**({"BCO_HTTP_TIMEOUT": "1"} if stall else {}))
    mark = last_seq(emulator)
    fault = {**_step_fault(step, workspace, "flaky"), "count": 1, "action": action}
    if step != "delete":
        emulator.add_fault(fault)
    attachments.create("flaky", workspace.spec())
    attachments.wait_condition("flaky", "True", reason="Attached", timeout=30)
    if step == "delete":
        emulator.add_fault(fault)
    attachments.delete("flaky")
    attachments.wait_gone("flaky", timeout=30)

    calls = Workspace.calls(emulator, mark)
    hit = [c for c in calls if c["fault"]]
    assert len(hit) == 1, brief(calls)
    if "close" in action or stall:
        assert hit[0]["status"] is None, hit[0]  # cut, or abandoned by the client: unprocessed
    else:
        assert hit[0]["status"] == action["status"]
    put = assert_one_effective(writes_in(calls, workspace, "flaky", "PUT"))
    assert put["status"] == 201
    assert_one_effective(writes_in(calls, workspace, "flaky", "DELETE"))
    assert "flaky" not in workspace.computes(emulator)
    if "retry_after" in action:
        assert assert_waited_retry_after(calls, action["retry_after"], (action["status"],)) == 1
    failed_write = step in ("put", "delete") and action.get("status", 599) >= 400
    unreadable_list = step == "list" and "raw" in action
    if failed_write or unreadable_list:  # reported (events outlive the resource), then retried
        assert "Retrying" in attachments.reasons("flaky")


# -- operations that end Failed or Canceled; expired operation URLs ----------------------------


@pytest.mark.parametrize("result", ["Failed", "Canceled"])
def test_attach_operation_that_ends_badly_is_reported_then_retried(
        result: str, start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """The attach's operation ends Failed/Canceled: Stalled with ARM's error code as the
    reason and an AttachFailed event; after the failure backoff the operator tries once more
    (this time ARM lets it succeed)."""
    mark = last_seq(emulator)
    start_operator()
    emulator.add_fault({"method": "PUT", "path_regex": compute_regex(workspace, "doomed"),
                        "action": {"operation_result": result, "code": "InjectedOutcome",
                                   "message": f"the attach was {result.lower()} on purpose"}})
    attachments.create("doomed", workspace.spec())
    obj = attachments.wait_condition("doomed", "False", reason="InjectedOutcome", timeout=20)
    status = obj["status"]
    assert status["provisioningState"] == result, status
    assert attachments.condition("doomed", "Stalled")["status"] == "True"
    codes = [e["code"] for e in status["provisioningErrors"]]
    assert codes and codes[0] in ("InjectedOutcome", result), status
    wait_for(lambda: "AttachFailed" in attachments.reasons("doomed"), message="event")
    attachments.wait_condition("doomed", "True", reason="Attached", timeout=30)

    calls = Workspace.calls(emulator, mark)
    puts = writes_in(calls, workspace, "doomed", "PUT")
    # Two PUTs, both legitimate: the first attach ended badly, the resync retried it.
    assert len(puts) == 2 == len(effective(puts)), brief(puts)
    assert writes_in(calls, workspace, "doomed", "DELETE") == []
    assert workspace.computes(emulator)["doomed"]["properties"]["provisioningState"] \
        == "Succeeded"


@pytest.mark.parametrize("result", ["Failed", "Canceled"])
def test_detach_operation_that_ends_badly_is_reported_then_retried(
        result: str, start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    start_operator()
    attachments.create("clingy", workspace.spec())
    attachments.wait_condition("clingy", "True")
    mark = last_seq(emulator)
    emulator.add_fault({"method": "DELETE", "path_regex": compute_regex(workspace, "clingy"),
                        "action": {"operation_result": result, "code": "InjectedOutcome",
                                   "message": f"the detach was {result.lower()} on purpose"}})
    attachments.delete("clingy")
    wait_for(lambda: "DetachFailed" in attachments.reasons("clingy"), timeout=20,
             message="DetachFailed event")
    message = next(m for _, r, m in attachments.events("clingy") if r == "DetachFailed")
    assert "InjectedOutcome" in message, message
    attachments.wait_gone("clingy", timeout=30)

    calls = Workspace.calls(emulator, mark)
    deletes = writes_in(calls, workspace, "clingy", "DELETE")
    # Two DELETEs, both legitimate: ARM ended the first detach badly.
    assert len(deletes) == 2 == len(effective(deletes)), brief(deletes)
    reads = [c for c in calls if c["target"] == "operation"
             and deletes[0]["seq"] < c["seq"] < deletes[1]["seq"]]
    assert reads, "the operator read the operation before detaching again"
    assert writes_in(calls, workspace, "clingy", "PUT") == []
    assert "clingy" not in workspace.computes(emulator)


def test_expired_detach_operation_url_is_decided_from_the_compute(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """The detach failed and its operation URL answers 404 (expired): the operator does not
    stall on the lost operation; it reads the compute (still attached) and detaches again."""
    start_operator()
    attachments.create("expired", workspace.spec())
    attachments.wait_condition("expired", "True")
    mark = last_seq(emulator)
    emulator.add_fault({"method": "DELETE", "path_regex": compute_regex(workspace, "expired"),
                        "action": {"operation_result": "Failed"}})
    emulator.add_fault({"method": "GET", "kind": "operation", "count": None,
                        "action": {"status": 404, "body": {"error": {
                            "code": "ResourceNotFound",
                            "message": "The operation was not found."}}}})
    attachments.delete("expired")
    attachments.wait_gone("expired", timeout=30)

    calls = Workspace.calls(emulator, mark)
    deletes = writes_in(calls, workspace, "expired", "DELETE")
    assert len(deletes) == 2 == len(effective(deletes)), brief(calls)
    lost = [c for c in calls if c["target"] == "operation" and c["status"] == 404]
    assert lost and deletes[0]["seq"] < lost[0]["seq"] < deletes[1]["seq"], brief(calls)
    assert writes_in(calls, workspace, "expired", "PUT") == []
    assert "expired" not in workspace.computes(emulator)


def test_expired_attach_operation_url_is_decided_from_the_compute(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """Mid-attach the compute vanishes (removed out of band) and the operation URL answers 404:
    the operator decides from what the workspace holds (nothing) and attaches again."""
    emulator.set_config({"operation_seconds": 4})
    mark = last_seq(emulator)
    start_operator()
    attachments.create("vanish", workspace.spec())
    wait_for(lambda: (attachments.get("vanish") or {}).get("status", {}).get("operation"),
             message="operation recorded in status")
    # The operation is in the status from the acknowledgement on, before the PUT is sent.
    wait_for(lambda: "vanish" in workspace.computes(emulator), message="the PUT reached ARM")
    emulator.add_fault({"method": "GET", "kind": "operation", "count": None,
                        "action": {"status": 404}})
    removed = emulator._call(
        "DELETE", f"/_admin/computes/{workspace.subscription}/{workspace.resource_group}/"
                  f"{workspace.name}/vanish").json()
    assert removed == {"deleted": True}
    attachments.wait_condition("vanish", "True", reason="Attached", timeout=30)

    calls = Workspace.calls(emulator, mark)
    puts = writes_in(calls, workspace, "vanish", "PUT")
    lost = [c for c in calls if c["target"] == "operation" and c["status"] == 404]
    assert lost, brief(calls)
    # Two PUTs, the second only after the operation was found gone and the compute absent.
    assert len(puts) == 2 == len(effective(puts)), brief(puts)
    assert puts[0]["seq"] < lost[0]["seq"] < puts[1]["seq"], brief(calls)
    assert writes_in(calls, workspace, "vanish", "DELETE") == []
    assert workspace.computes(emulator)["vanish"]["properties"]["provisioningState"] \
        == "Succeeded"


# -- the operator process dies ----------------------------------------------------------------


def test_sigkill_between_put_and_first_poll_converges_with_one_put(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """Killed the moment ARM has answered the PUT, before any poll (and possibly before the
    operation was written to status): the restarted operator finds the compute it created,
    by its owner tags, and waits for it instead of sending a second PUT."""
    emulator.set_config({"operation_seconds": 4})
    mark = last_seq(emulator)
    first = start_operator()
    attachments.create("abrupt", workspace.spec())
    put = wait_for(lambda: next((c for c in writes_in(emulator.requests(mark), workspace,
                                                       "abrupt", "PUT")
                                 if c["status"] is not None), None),
                   timeout=20, interval=0.005, message="PUT answered")
    first.kill()
    assert put is not None
    recorded = (attachments.get("abrupt") or {}).get("status", {}).get("operation")
    after_put = [c for c in emulator.requests(put["seq"]) if c["target"] == "list"]
    assert after_put == [], "killed after the first poll, not before it"
    start_operator()
    attachments.wait_condition("abrupt", "True", reason="Attached", timeout=30)
    calls = Workspace.calls(emulator, mark)
    assert_one_effective(writes_in(calls, workspace, "abrupt", "PUT"))
    assert writes_in(calls, workspace, "abrupt", "DELETE") == []
    print(f"operation in status when killed: {recorded!r}")


def test_sigkill_after_the_first_poll_of_an_attach_converges_with_one_put(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    emulator.set_config({"operation_seconds": 4})
    mark = last_seq(emulator)
    first = start_operator()
    attachments.create("midway", workspace.spec())
    put = wait_for(lambda: next(iter(writes_in(emulator.requests(mark), workspace, "midway",
                                               "PUT")), None), message="PUT sent")
    assert put is not None
    wait_for(lambda: [c for c in emulator.requests(put["seq"]) if c["target"] == "list"],
             message="a poll after the PUT")
    assert attachments.condition("midway").get("status") != "True"
    first.kill()
    start_operator()
    attachments.wait_condition("midway", "True", reason="Attached", timeout=30)
    calls = Workspace.calls(emulator, mark)
    assert_one_effective(writes_in(calls, workspace, "midway", "PUT"))
    assert writes_in(calls, workspace, "midway", "DELETE") == []


def test_sigkill_during_detach_converges_with_one_delete(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    first = start_operator()
    attachments.create("parting", workspace.spec())
    attachments.wait_condition("parting", "True")
    emulator.set_config({"operation_seconds": 4})
    mark = last_seq(emulator)
    attachments.delete("parting")
    wait_for(lambda: [c for c in writes_in(emulator.requests(mark), workspace, "parting",
                                           "DELETE") if c["status"] is not None],
             message="DELETE answered")
    first.kill()
    assert attachments.get("parting") is not None, "the finalizer holds the resource"
    start_operator()
    attachments.wait_gone("parting", timeout=30)
    calls = Workspace.calls(emulator, mark)
    assert_one_effective(writes_in(calls, workspace, "parting", "DELETE"))
    assert writes_in(calls, workspace, "parting", "PUT") == []
    assert "parting" not in workspace.computes(emulator)


# -- credentials -------------------------------------------------------------------------------


def test_failing_identity_endpoint_reports_authentication_failed_then_recovers(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """Managed identity (the operator's default in these tests) with a failing token endpoint:
    Ready=False reason AuthenticationFailed with a readable message and no secret; once the
    endpoint recovers, the attach completes."""
    set_identity(emulator, fail=True, status=500)
    mark = last_seq(emulator)
    proc = start_operator()
    attachments.create("noauth", workspace.spec())
    obj = attachments.wait_condition("noauth", "False", reason="AuthenticationFailed",
                                     timeout=40)
    message = attachments.condition("noauth")["message"]
    assert message.strip(), obj["status"]
    assert [c for c in Workspace.calls(emulator, mark) if c["method"] != "GET"] == []
    set_identity(emulator, fail=False)
    attachments.wait_condition("noauth", "True", reason="Attached", timeout=40)

    assert "AuthenticationFailed" in attachments.reasons("noauth")
    secret = emulator.identity_header
    assert secret and secret not in status_and_events(attachments, "noauth")
    assert secret not in proc.log()
    calls = Workspace.calls(emulator, mark)
    assert_one_effective(writes_in(calls, workspace, "noauth", "PUT"))
    assert writes_in(calls, workspace, "noauth", "DELETE") == []
    print(f"AuthenticationFailed message: {message}")


def test_token_expiring_mid_operation_reports_authentication_failed_then_recovers(
        start_operator: Any, attachments: Attachments, workspace: Workspace, emulator: Any,
        tmp_path: Path) -> None:
    """static-file credential. The operator caches the file's token; here that token expires
    (per ARM) while the attach runs. ARM answers 401, the operator drops the token and
    re-reads the file, which now holds an expired token as well: AuthenticationFailed.
    A valid token written to the file is picked up on the next retry."""
    token_file = tmp_path / "arm-token"
    token_file.write_text("not-yet-written\n")
    emulator.set_config({"operation_seconds": 10})
    mark = last_seq(emulator)
    proc = start_operator(BCO_CREDENTIAL="static-file", BCO_STATIC_TOKEN_FILE=str(token_file))
    short = emulator.mint_token(expires_in=6)
    token_file.write_text(short + "\n")
    attachments.create("shortlived", workspace.spec())
    wait_for(lambda: effective(writes_in(emulator.requests(mark), workspace, "shortlived",
                                         "PUT")), message="PUT accepted")
    expired = emulator.mint_token(expires_in=-60)
    token_file.write_text(expired + "\n")
    attachments.wait_condition("shortlived", "False", reason="AuthenticationFailed", timeout=20)
    valid = emulator.mint_token(expires_in=3600)
    token_file.write_text(valid + "\n")
    attachments.wait_condition("shortlived", "True", reason="Attached", timeout=30)

    calls = Workspace.calls(emulator, mark)
    assert [c for c in calls if c["status"] == 401 and c["auth"] == "expired"], brief(calls)
    assert_one_effective(writes_in(calls, workspace, "shortlived", "PUT"))
    assert writes_in(calls, workspace, "shortlived", "DELETE") == []
    seen = status_and_events(attachments, "shortlived") + proc.log()
    for token in (short, expired, valid):
        assert token not in seen


# -- many resources deleted while their attaches run ------------------------------------------


def test_twenty_resources_deleted_while_attaching_release_every_finalizer(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """Stands in for "a namespace with 20 attachments was deleted": the test bed runs no
    kube-controller-manager, so deleting a namespace would not cascade to its resources.
    All 20 resources are deleted at once instead, while their attach operations (3 s each)
    are still running."""
    emulator.set_config({"operation_seconds": 3})
    names = [f"bulk-{i:02d}" for i in range(20)]
    mark = last_seq(emulator)
    start_operator()
    for name in names:
        attachments.create(name, workspace.spec())
    wait_for(lambda: len([c for c in emulator.requests(mark) if c["method"] == "PUT"]) >= 10,
             message="half of the PUTs sent")
    started = time.monotonic()
    for name in names:
        attachments.delete(name)
    in_flight = [c["compute"]["name"] for c in emulator.computes()
                 if c["workspace"].lower() == workspace.name.lower() and c["busy"]]
    assert in_flight, "every attach had finished before the deletes: nothing was in flight"
    for name in names:
        attachments.wait_gone(name, timeout=max(5.0, 60 - (time.monotonic() - started)))

    calls = Workspace.calls(emulator, mark)
    left = set(workspace.computes(emulator))
    assert left == set(), f"still attached: {sorted(left)}"
    writes = [c for c in calls if c["method"] in ("PUT", "DELETE")]
    assert writes == effective(writes), f"stray writes: {brief(writes)}"
    attached = 0
    for name in names:
        puts = writes_in(calls, workspace, name, "PUT")
        deletes = writes_in(calls, workspace, name, "DELETE")
        assert len(puts) <= 1 and len(deletes) == len(puts), (name, brief(puts + deletes))
        if puts:
            assert puts[0]["seq"] < deletes[0]["seq"], (name, brief(puts + deletes))
            attached += 1
    print(f"{attached} of 20 had a PUT, {len(in_flight)} still attaching when all were "
          f"deleted; "
          f"{time.monotonic() - started:.1f}s from the deletes to the last finalizer")


# -- a foreign operation URL -------------------------------------------------------------------


def test_foreign_operation_url_is_reported_and_never_followed(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    """ARM's answer to the PUT names an operation on another host. The operator must not send
    its token there: it reports UnsafeOperationUrl and does not call the URL (that the
    emulator cannot see a call to another host is no proof, hence also: no request with that
    path reached the emulator, and the operator did not crash on it). The faulted PUT never
    reached the emulator's handler, so the next resync attaches for real."""
    mark = last_seq(emulator)
    proc = start_operator()
    emulator.add_fault({"method": "PUT", "path_regex": compute_regex(workspace, "lured"),
                        "action": {"status": 201,
                                   "headers": {"Azure-AsyncOperation": "https://evil.example/op"},
                                   "body": {"id": workspace.compute_path("lured"),
                                            "name": "lured", "properties": {
                                                "computeType": "Batch",
                                                "provisioningState": "Creating"}}}})
    attachments.create("lured", workspace.spec())

    def reported() -> tuple[str, str] | None:
        errors = (attachments.get("lured") or {}).get("status", {}).get("provisioningErrors")
        for error in errors or []:
            if error.get("code") == "UnsafeOperationUrl":
                return "status.provisioningErrors", str(error.get("message"))
        for _, reason, message in attachments.events("lured"):
            if "UnsafeOperationUrl" in message:
                return f"event {reason}", message
        return None

    found = wait_for(reported, timeout=20, message="UnsafeOperationUrl reported")
    assert found is not None
    where, message = found
    assert "not followed" in message, message
    attachments.wait_condition("lured", "True", reason="Attached", timeout=30)

    calls = Workspace.calls(emulator, mark)
    assert [c for c in calls if c["path"].rstrip("/") == "/op"] == []
    assert "Traceback" not in proc.log()
    puts = writes_in(calls, workspace, "lured", "PUT")
    assert puts[0]["fault"] == "status"
    assert_one_effective(puts)
    assert writes_in(calls, workspace, "lured", "DELETE") == []
    print(f"UnsafeOperationUrl reported in {where}: {message}")
