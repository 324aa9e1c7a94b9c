"""Kubernetes-side faults: liveness and progress must not depend on how fast the API server is.

Each test runs the operator with its kubeconfig pointed at the fault proxy
(`batchcompute_testbed.kubeproxy`), so every request it makes to the API server, kopf's and its
own, passes the proxy; the test's admin client and the ARM emulator are never faulted. A test
attaches 20 resources in two workspaces under one fault, clears the fault, and checks:

- **Recovery**: every attachment whose compute ARM reports `Succeeded` is Ready within two poll
  intervals of the later of the fault clearing and ARM's operation ending, plus one resync
  interval where the fault hid a watch event from the operator. Ready times are sampled by a
  LIST every `SAMPLE` seconds; ARM's end times are the emulator's own.
- **Noticed**: every attachment is acknowledged (its first status write the API server took)
  within the same bound of the later of the fault clearing and its creation, so a resource
  the fault hid is not left waiting for something else to wake the operator.
- **No double write**: exactly one PUT per compute in the emulator's request log, no DELETE.
- **Liveness**: `/healthz` answered 200 within the liveness probe's timeout all along.
- **Events**: each attachment has exactly one `Attaching` and one `Attached` event once the
  fault is cleared (posting is retried, never duplicated).

The measured figures are printed (`pytest -s`) and recorded in docs/fault-matrix.md.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from operator_proc import GROUP, PLURAL, VERSION, Attachments, OperatorProcess, Workspace
from waiting import wait_for

from batchcompute_testbed.kubeproxy import (
    EVENT_POST,
    STATUS_PATCH,
    KubeProxy,
    server_timeout,
    too_many_requests,
)

N = 20  # attachments per test, half in each of two workspaces
# The operator's intervals here: long enough that two poll intervals leave one for the work
# itself on a loaded 2-core machine, short enough to keep each test under a minute.
POLL = 2.0
RESYNC = 6.0
SAMPLE = 0.1  # seconds between two LISTs of the attachments, and the sampling error
LIVENESS_TIMEOUT = 5.0  # deploy/manager/deployment.yaml: livenessProbe.timeoutSeconds
HEALTH_EVERY = 0.5
READY_WAIT = 90.0  # the deadline for all to be Ready after a fault clears; never reached
EVENT_WAIT = 60.0


# -- watching the operator from outside -------------------------------------------------------


class Monitor:
    """Samples, on threads of its own, when each attachment first reads Ready and what the
    operator's liveness endpoint answers."""

    def __init__(self, api: ApiClient, namespace: str, health_port: int) -> None:
        self.custom = CustomObjectsApi(api)
        self.namespace = namespace
        self.health_url = f"http://127.0.0.1:{health_port}/healthz"
        self.ready_at: dict[str, float] = {}  # wall clock
        self.health: list[tuple[float, int | None, float]] = []  # (when, status, seconds)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._sample_ready, daemon=True),
                         threading.Thread(target=self._probe_health, daemon=True)]

    def start(self) -> Monitor:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=LIVENESS_TIMEOUT + 5)

    def _sample_ready(self) -> None:
        while not self._stop.is_set():
            try:
                items = self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL)["items"]
            except Exception:  # the admin's API server is never faulted; try again
                items = []
            seen = time.time()  # when the answer came: late by at most the LIST's duration
            for obj in items:
                name = obj["metadata"]["name"]
                if name not in self.ready_at and _ready(obj):
                    self.ready_at[name] = seen
            self._stop.wait(SAMPLE)

    def _probe_health(self) -> None:
        with httpx.Client(timeout=LIVENESS_TIMEOUT) as client:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    status: int | None = client.get(self.health_url).status_code
                except httpx.HTTPError:
                    status = None
                self.health.append((time.time(), status, time.monotonic() - began))
                self._stop.wait(HEALTH_EVERY)

    def unhealthy(self) -> list[tuple[float, int | None, float]]:
        return [h for h in self.health if h[1] != 200 or h[2] > LIVENESS_TIMEOUT]


def _ready(obj: dict[str, Any]) -> bool:
    generation = obj["metadata"].get("generation")
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True"
                        and cond.get("observedGeneration") == generation)
    return False


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=LIVENESS_TIMEOUT).status_code
    except httpx.HTTPError:
        return None


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


# -- one scenario ------------------------------------------------------------------------------


@dataclass
class Scenario:
    """20 attachments in two workspaces, an operator behind the proxy, and what was measured."""

    proxy: KubeProxy
    emulator: Any
    attachments: Attachments
    core: CoreV1Api
    workspaces: list[Workspace]
    operator: OperatorProcess
    monitor: Monitor
    arm_seq: int
    proxy_seq: int
    names: list[str] = field(default_factory=lambda: [f"a{i:02d}" for i in range(N)])
    created: dict[str, float] = field(default_factory=dict)  # wall clock
    fault_began: float = 0.0  # monotonic
    fault_began_at: float = 0.0  # wall clock
    cleared: float = 0.0  # wall clock
    faulted: int = 0  # requests the fault's rule met

    @property
    def poll(self) -> float:
        return float(self.operator.env()["BCO_POLL_INTERVAL"])

    @property
    def resync(self) -> float:
        return float(self.operator.env()["BCO_RESYNC_INTERVAL"])

    def workspace_of(self, name: str) -> Workspace:
        return self.workspaces[int(name[1:]) % 2]

    def create(self, names: list[str]) -> None:
        for name in names:
            self.attachments.create(name, self.workspace_of(name).spec())
            self.created[name] = time.time()

    def attached_in_arm(self) -> int:
        """How many of this scenario's computes ARM holds (in any state)."""
        return sum(1 for ws in self.workspaces for name in ws.computes(self.emulator)
                   if name in self.names)

    def hold(self, seconds: float, rule: int | None = None, what: str = "the fault") -> None:
        """Keep the fault on for `seconds` (its length): counted from the first request the
        rule met (the operator really ran into it), or without a rule from when it was set."""
        def begun() -> float | None:
            if rule is None:
                return self.fault_began
            found = [r.first_hit for r in self.proxy.rules() if r.id == rule]
            return found[0] if found else None

        def over() -> bool:
            start = begun()
            return start is not None and time.monotonic() - start >= seconds

        wait_for(over, timeout=seconds + 60, interval=SAMPLE, message=f"{what} to last {seconds}s")

    def fault_set(self) -> None:
        self.fault_began = time.monotonic()
        self.fault_began_at = time.time()

    def clear(self) -> None:
        self.faulted = sum(r.hits for r in self.proxy.rules())
        self.proxy.clear()
        self.cleared = time.time()

    def write_timeline(self, path: Path) -> None:
        """What the proxy and ARM saw, and when each attachment read Ready, in time order
        (next to the operator's log, for a test that fails)."""
        lines = [(e.time, f"kube  {e.method} {e.path}{' (watch)' if e.watch else ''} -> "
                          f"{e.status} {e.fault or ''} {e.seconds:.3f}s")
                 for e in self.proxy.requests(self.proxy_seq)]
        lines += [(c["time"], f"arm   {c['method']} {c['path']} -> {c['status']}")
                  for c in self.emulator.requests(self.arm_seq)]
        lines += [(t, f"test  {n} Ready") for n, t in self.monitor.ready_at.items()]
        if self.fault_began_at:
            lines.append((self.fault_began_at, "test  fault set"))
        if self.cleared:
            lines.append((self.cleared, "test  fault cleared"))
        path.write_text("".join(
            f"{datetime.fromtimestamp(t).strftime('%H:%M:%S.%f')[:-3]} {text}\n"
            for t, text in sorted(lines)))

    # -- after the fault ---------------------------------------------------------------------

    def wait_all_ready(self) -> None:
        wait_for(lambda: all(n in self.monitor.ready_at for n in self.names),
                 timeout=READY_WAIT, interval=SAMPLE,
                 message=f"all {N} Ready (Ready so far: {sorted(self.monitor.ready_at)})")

    def arm_done(self) -> dict[str, float]:
        """When ARM's attach operation of each compute ended Succeeded (wall clock)."""
        ended: dict[str, float] = {}
        for op in self.emulator.operations():
            if op["action"] != "attach" or op["status"] != "Succeeded" or "endTime" not in op:
                continue
            parts = op["compute"].split("/")
            for name in self.names:
                ws = self.workspace_of(name)
                if parts[2:] == [ws.name.lower(), name]:
                    ended[name] = min(ended.get(name, float("inf")), _epoch(op["endTime"]))
        return ended

    def recovery(self) -> dict[str, float]:
        """Per attachment: seconds from max(fault cleared, ARM Succeeded) to Ready."""
        done = self.arm_done()
        assert sorted(done) == self.names, f"ARM never finished: {set(self.names) - set(done)}"
        return {n: self.monitor.ready_at[n] - max(self.cleared, done[n]) for n in self.names}

    def acknowledged(self) -> dict[str, float]:
        """Per attachment: seconds from max(fault cleared, created) to the operator's first
        status write that the API server took (its acknowledgement of the new resource)."""
        first: dict[str, float] = {}
        for entry in self.proxy.requests(self.proxy_seq):
            name = entry.path.rsplit("/", 2)[-2] if entry.path.endswith("/status") else ""
            if entry.method == "PATCH" and name in self.created and entry.forwarded and \
                    name not in first:
                first[name] = entry.time
        return {n: first.get(n, float("inf")) - max(self.cleared, self.created[n])
                for n in self.names}

    def check_arm_writes(self) -> None:
        calls = [c for c in Workspace.calls(self.emulator, self.arm_seq)
                 if any(f"/workspaces/{ws.name}/" in c["path"] for ws in self.workspaces)]
        puts = Counter(c["path"].rsplit("/", 1)[1] for c in calls if c["method"] == "PUT")
        assert puts == Counter(self.names), f"PUTs per compute: {dict(puts)}"
        assert not [c for c in calls if c["method"] == "DELETE"]

    def event_reasons(self) -> dict[str, Counter[str]]:
        reasons: dict[str, Counter[str]] = {n: Counter() for n in self.names}
        for event in self.core.list_namespaced_event(self.attachments.namespace).items:
            name = event.involved_object.name
            if name in reasons:
                reasons[name][event.reason] += 1
        return reasons

    def check_events(self) -> dict[str, Counter[str]]:
        """Exactly one Attaching and one Attached event per attachment, once they are posted."""
        def complete() -> dict[str, Counter[str]] | None:
            reasons = self.event_reasons()
            ok = all(r["Attaching"] >= 1 and r["Attached"] >= 1 for r in reasons.values())
            return reasons if ok else None

        reasons = wait_for(complete, timeout=EVENT_WAIT, interval=0.5,
                           message="an Attaching and an Attached event for every attachment")
        twice = {n: dict(r) for n, r in reasons.items()
                 if r["Attaching"] != 1 or r["Attached"] != 1}
        assert not twice, f"events posted more than once: {twice}"
        return reasons

    def check(self, *, hid_events: bool) -> dict[str, float]:
        """The four checks of every test; returns the figures to report."""
        self.wait_all_ready()
        recovery = self.recovery()
        bound = 2 * self.poll + (self.resync if hid_events else 0.0)
        late = {n: round(s, 2) for n, s in recovery.items() if s > bound + SAMPLE}
        acked = self.acknowledged()
        slow = {n: round(s, 2) for n, s in acked.items() if s > bound}
        figures = {
            "ack_max": max(acked.values()),
            "fault_seconds": self.cleared - self.fault_began_at,
            "bound": bound,
            "recovery_max": max(recovery.values()),
            "recovery_median": statistics.median(recovery.values()),
            "all_ready_after_clear": max(self.monitor.ready_at.values()) - self.cleared,
        }
        self.check_arm_writes()
        reasons = self.check_events()
        figures["events"] = sum(sum(r.values()) for r in reasons.values())
        posted = [e.time for e in self.proxy.requests(self.proxy_seq)
                  if e.method == "POST" and e.path.endswith("/events") and e.status in (201, 409)]
        figures["events_done_after_clear"] = max(posted) - self.cleared
        figures["faulted_requests"] = self.faulted
        self.monitor.stop()
        figures["health_samples"] = len(self.monitor.health)
        figures["health_slowest"] = max((h[2] for h in self.monitor.health), default=0.0)
        print(f"\nfigures: { {k: round(v, 2) for k, v in figures.items()} }")
        assert not slow, f"acknowledged later than {bound:.1f}s after the fault cleared: {slow}"
        assert not late, f"Ready later than {bound:.1f}s after the fault cleared: {late}"
        assert self.monitor.health, "the liveness endpoint was never probed"
        assert not self.monitor.unhealthy(), f"/healthz failed: {self.monitor.unhealthy()[:5]}"
        assert "Traceback" not in self.operator.log()
        return figures


@pytest.fixture
def scenario(start_operator_via_proxy: Any, kube_proxy: KubeProxy, emulator: Any,
             attachments: Attachments, kube: ApiClient, controlplane: Any,
             tmp_path: Path) -> Iterator[Scenario]:
    workspaces = [Workspace.fresh(emulator), Workspace.fresh(emulator)]
    arm_seq = (emulator.requests() or [{"seq": 0}])[-1]["seq"]
    proxy_seq = kube_proxy.last_seq()
    operator = start_operator_via_proxy(BCO_POLL_INTERVAL=str(POLL),
                                        BCO_RESYNC_INTERVAL=str(RESYNC))
    # Faults go on once the operator is ready (its watch is up and both APIs answered).
    wait_for(lambda: _status(f"http://127.0.0.1:{operator.health_port}/readyz") == 200,
             timeout=60, message="the operator ready")
    monitor = Monitor(controlplane.client(), attachments.namespace, operator.health_port)
    run = Scenario(kube_proxy, emulator, attachments, CoreV1Api(kube), workspaces, operator,
                   monitor.start(), arm_seq, proxy_seq)
    try:
        yield run
    finally:
        monitor.stop()
        run.write_timeline(tmp_path / "timeline.log")


# -- the faults ---------------------------------------------------------------------------------


def test_slow_status_patches(scenario: Scenario) -> None:
    """Every status PATCH takes 3 s, for 8 s, while 20 resources attach."""
    rule = scenario.proxy.delay(*STATUS_PATCH, seconds=3.0)
    scenario.fault_set()
    scenario.create(scenario.names)
    scenario.hold(8.0, rule, "slow status patches")
    scenario.clear()
    scenario.check(hid_events=False)


@pytest.mark.parametrize("how", ["503", "reset"])
def test_failing_status_patches(scenario: Scenario, how: str) -> None:
    """Every status PATCH fails for 8 s (longer than the client's own retries) while the
    resources are created: 503, or the connection reset before the API server sees it."""
    proxy = scenario.proxy
    rule = proxy.fail(*STATUS_PATCH, status=503) if how == "503" else \
        proxy.reset(*STATUS_PATCH)
    scenario.fault_set()
    scenario.create(scenario.names)
    scenario.hold(8.0, rule, "failing status patches")
    scenario.clear()
    scenario.check(hid_events=False)


def test_status_patch_answers_lost(scenario: Scenario) -> None:
    """Once every PUT is sent, each status PATCH reaches the API server and is applied, but
    its answer is lost (the connection reset), for 8 s: the operator cannot know its
    `Attached` status was written."""
    scenario.create(scenario.names)
    wait_for(lambda: scenario.attached_in_arm() == N, timeout=60, message="every PUT sent")
    rule = scenario.proxy.lose_response(*STATUS_PATCH)
    scenario.fault_set()
    scenario.hold(8.0, rule, "lost status answers")
    scenario.clear()
    scenario.check(hid_events=False)


@pytest.mark.parametrize("how", ["server-timeout", "429", "lost-answer"])
def test_failing_event_posts(scenario: Scenario, how: str) -> None:
    """Every event POST fails for 9 s (longer than the client's own retries): the API
    server's "could not be completed at this time" (500 ServerTimeout, Retry-After 1), 429
    with Retry-After 1, or stored and its answer lost."""
    proxy = scenario.proxy
    if how == "server-timeout":
        rule = proxy.fail(*EVENT_POST, **server_timeout("POST", "events"))
    elif how == "429":
        rule = proxy.fail(*EVENT_POST, **too_many_requests())
    else:
        rule = proxy.lose_response(*EVENT_POST)
    scenario.fault_set()
    scenario.create(scenario.names)
    scenario.hold(9.0, rule, "failing event posts")
    scenario.clear()
    scenario.check(hid_events=False)


def test_stalled_watch(scenario: Scenario) -> None:
    """Half the resources are created and attaching; then the watch stream goes silent (its
    connection stays open) and the other half is created behind it. Cleared after 6 s."""
    first, second = scenario.names[::2], scenario.names[1::2]
    scenario.create(first)
    wait_for(lambda: scenario.attached_in_arm() >= len(first) // 2, timeout=30,
             message="the first half attaching")
    rule = scenario.proxy.stall_watches()
    scenario.fault_set()
    scenario.create(second)
    scenario.hold(6.0, rule, "the stalled watch")
    scenario.clear()
    scenario.check(hid_events=True)


def test_watch_streams_closing_repeatedly(scenario: Scenario) -> None:
    """Every watch stream is cut (connection reset) 1 s after it opens, for 8 s, while the
    resources are created and attach."""
    rule = scenario.proxy.cut_watches(after=1.0)
    scenario.fault_set()
    scenario.create(scenario.names)
    scenario.hold(8.0, rule, "cut watch streams")
    scenario.clear()
    scenario.check(hid_events=False)


@pytest.mark.parametrize("how", ["hold", "refuse"])
def test_paused_api_server(scenario: Scenario, how: str) -> None:
    """Mid-attach the API server stops answering the operator for 20 s: every request held
    (`hold`), or every connection reset and new ones refused (`refuse`). Half the resources
    are created before, the other half during the pause."""
    first, second = scenario.names[::2], scenario.names[1::2]
    scenario.create(first)
    wait_for(lambda: scenario.attached_in_arm() >= len(first) // 2, timeout=30,
             message="the first half attaching")
    scenario.proxy.pause(refuse=how == "refuse")
    scenario.fault_set()
    scenario.create(second)
    scenario.hold(20.0, what="the pause")
    scenario.clear()
    scenario.check(hid_events=False)
