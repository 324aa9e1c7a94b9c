"""One benchmark run: a fresh control plane, emulator and operator; attach N, then the phases.

Figures go into `results` as each phase ends (and `progress` is called), so a phase that fails
never takes the figures of the phases before it along.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchcompute_testbed.controlplane import ControlPlane
from batchcompute_testbed.stack import (
    EmulatorProcess,
    free_port,
    install,
    kubectl,
    start_operator,
    stop_process,
)
from bench.armlog import ArmCalls, ArmCursor
from bench.audit import AuditCursor
from bench.kube import Admin, Watcher, is_ready
from bench.procstat import cpu_seconds, rss_peak_mib
from bench.scrape import scrape, total

NAMESPACE = "bench"
LOCATION = "westeurope"
LATENCY_S = 0.05
OPERATION_S = 2.0
TAIL_S = OPERATION_S + 2 * LATENCY_S  # the last attach: its PUT, its operation, the poll
PAGE_SIZE = 100
POLL_INTERVAL_S = 1.0  # the operator's BCO_POLL_INTERVAL in every run
EMULATOR_ARGS = ("--latency-ms", str(int(LATENCY_S * 1000)), "--operation-seconds",
                 str(OPERATION_S), "--page-size", str(PAGE_SIZE), "--throttle", "default",
                 "--log-level", "WARNING")
# ARM's published per-subscription token buckets, which the emulator enforces by default.
WRITE_BUCKET, WRITE_REFILL = 200, 10.0
DELETE_BUCKET, DELETE_REFILL = 200, 10.0
DRIFTED = 50
FULL = ("steady", "drift", "restart", "detach")
Progress = Callable[[dict[str, float]], None]


@dataclass(frozen=True)
class Layout:
    """How the attachments spread: over `subscriptions` and `workspaces` (round robin)."""

    subscriptions: int
    workspaces: int

    def subscription(self, i: int) -> str:
        return f"00000000-0000-0000-0000-0000000000{0xb1 + i % self.subscriptions:02x}"

    def workspace(self, j: int) -> dict[str, str]:
        i = j % self.workspaces
        return {"subscriptionId": self.subscription(i), "resourceGroup": "ml-rg",
                "name": f"ws-{i}"}

    def account_id(self, j: int) -> str:
        ws = self.workspace(j)
        return (f"/subscriptions/{ws['subscriptionId']}/resourceGroups/batch-rg/providers/"
                f"Microsoft.Batch/batchAccounts/batch{j % self.workspaces}")

    def seed(self) -> dict[str, Any]:
        return {
            "workspaces": [{**self.workspace(i), "location": LOCATION}
                           for i in range(self.workspaces)],
            "batchAccounts": [{"subscriptionId": self.workspace(i)["subscriptionId"],
                               "resourceGroup": "batch-rg", "name": f"batch{i}",
                               "location": LOCATION} for i in range(self.workspaces)],
        }

    def attachment(self, j: int) -> dict[str, Any]:
        return {
            "apiVersion": "batchcompute.azureml.dev/v1alpha1",
            "kind": "BatchComputeAttachment",
            "metadata": {"name": f"a{j:05d}", "namespace": NAMESPACE},
            "spec": {"workspace": self.workspace(j),
                     "batchAccount": {"resourceId": self.account_id(j)}},
        }

    def per_subscription(self, n: int) -> Counter[str]:
        return Counter(self.workspace(j)["subscriptionId"] for j in range(n))

    def lower_bound(self, n: int, bucket: int, refill: float) -> float:
        """The throttle's floor: a subscription's writes beyond its bucket at the refill rate,
        plus one long-running operation and its round trips."""
        return max(max(0, k - bucket) / refill
                   for k in self.per_subscription(n).values()) + TAIL_S


SMALL = Layout(2, 10)
LARGE = Layout(10, 100)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def load_average() -> float:
    return os.getloadavg()[0]


def wait(what: str, check: Callable[[], tuple[bool, str]], deadline: float,
         alive: Callable[[], None], interval: float = 0.05) -> None:
    last_report = time.monotonic()
    while True:
        alive()
        done, progress = check()
        if done:
            return
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"gave up waiting for {what} ({progress})")
        if now - last_report >= 10:
            log(f"  {what}: {progress}")
            last_report = now
        time.sleep(interval)


def status_changes(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> Counter[str]:
    """For each status field (conditions by type), how many objects saw it change; the number
    of objects with any change under "(objects)"."""
    def fields(obj: dict[str, Any]) -> dict[str, Any]:
        status = dict(obj.get("status") or {})
        for c in status.pop("conditions", None) or []:
            status[f"conditions[{c.get('type')}]"] = c
        return status

    old = {obj["metadata"]["name"]: fields(obj) for obj in before}
    changed: Counter[str] = Counter()
    for obj in after:
        previous, current = old.get(obj["metadata"]["name"], {}), fields(obj)
        keys = [k for k in previous.keys() | current.keys() if previous.get(k) != current.get(k)]
        changed.update(keys)
        if keys:
            changed["(objects)"] += 1
    return changed


def arm_summary(calls: ArmCalls) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(calls.breakdown().items())) or "none"


def k8s_summary(writes: Counter[str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(writes.items())) or "none"


def run(args: argparse.Namespace, work: Path, n: int | None = None,
        phases: Sequence[str] = FULL, *, layout: Layout = SMALL,
        operator_env: dict[str, str] | None = None,
        progress: Progress | None = None) -> dict[str, float]:
    """One fresh control plane, emulator and operator; attach N, then the chosen phases."""
    n = args.n if n is None else n
    resync: float = args.resync
    timeout: float = args.timeout
    results: dict[str, float] = {"n": n, "resync_interval_seconds": resync,
                                 "poll_interval_seconds": POLL_INTERVAL_S,
                                 "workspaces": layout.workspaces,
                                 "subscriptions": layout.subscriptions,
                                 "load_avg_1m_start": load_average()}

    def done(phase: str) -> None:
        log(f"{phase} done")
        if progress is not None:
            progress(results)

    keep = getattr(args, "keep", None) is not None  # --keep: the control plane's logs too
    with ControlPlane(audit_log=True, run_dir=work / "controlplane" if keep else None,
                      keep_run_dir=keep) as plane:
        kubeconfig = plane.kubeconfig_admin
        assert plane.audit_log_path is not None
        admin = Admin(kubeconfig)
        emulator = EmulatorProcess(work / "emulator", EMULATOR_ARGS, layout.seed())
        operator = None
        watcher: Watcher | None = None
        log_file = work / "operator.log"
        try:
            emulator.start()
            install(kubeconfig)
            kubectl(kubeconfig, "create", "namespace", NAMESPACE)
            metrics_port = free_port()
            env = {**emulator.operator_env(), "BCO_POLL_INTERVAL": f"{POLL_INTERVAL_S:g}",
                   "BCO_RESYNC_INTERVAL": f"{resync:g}", "BCO_NAMESPACES": NAMESPACE,
                   "BCO_METRICS_PORT": str(metrics_port),
                   **dict(kv.split("=", 1) for kv in args.operator_env),
                   **(operator_env or {})}
            operator = start_operator(plane.kubeconfig_operator, env, log_file)
            proc = operator
            log(f"N={n}: control plane, emulator ({layout.subscriptions} subscriptions, "
                f"{layout.workspaces} workspaces) and operator (pid {proc.pid}) up")

            def alive() -> None:
                plane.check_alive()
                if operator is None or operator.poll() is not None:
                    raise RuntimeError("the operator exited")
                if emulator.proc is None or emulator.proc.poll() is not None:
                    raise RuntimeError("the emulator exited")

            watcher = Watcher(admin, NAMESPACE).start()
            arm, audit = ArmCursor(emulator), AuditCursor(plane.audit_log_path)
            time.sleep(1)  # let the operator's start-up listing settle before the marks
            arm.skip()
            audit.skip()
            names = [f"a{j:05d}" for j in range(n)]

            # The attach burst.
            docs = [layout.attachment(j) for j in range(n)]
            cpu_start = cpu_seconds(proc.pid)
            started = time.monotonic()
            admin.create_all(NAMESPACE, docs)
            results["create_seconds"] = time.monotonic() - started
            log(f"attach: {n} created in {results['create_seconds']:.1f}s; waiting for Ready")
            wait("Ready", lambda: ((c := watcher.count_ready(names)) == n, f"{c}/{n} Ready"),
                 started + timeout, alive)
            seconds = watcher.last_ready(names) - started
            cpu_attach = cpu_seconds(proc.pid) - cpu_start
            attach_writes = audit.take_settled()  # the last events trail the last Ready
            attach_calls = arm.take()
            # Nothing can be attached before it exists: the floor is the throttle's or the
            # last creation plus one operation, whichever is later (both are reported).
            throttle_bound = layout.lower_bound(n, WRITE_BUCKET, WRITE_REFILL)
            bound = max(throttle_bound, results["create_seconds"] + TAIL_S)
            first_status = [watcher.first_status_at[k] - watcher.created_at[k]
                            for k in names if k in watcher.first_status_at]
            results.update({
                "seconds": seconds,
                "lower_bound_seconds": bound,
                "throttle_bound_seconds": throttle_bound,
                "ratio": seconds / bound,
                "ratio_throttle": seconds / throttle_bound,
                "arm_writes_per_attach": attach_calls.count("PUT") / n,
                "arm_reads_per_attach": attach_calls.count("GET") / n,
                "arm_workspace_reads_attach": attach_calls.count("GET", target="workspace"),
                "arm_lists_max_per_workspace": attach_calls.most_lists_of_one_workspace(),
                "arm_requests_attach": attach_calls.total,
                "arm_429_attach": attach_calls.throttled(),
                "arm_429_fraction": attach_calls.throttled() / max(1, attach_calls.total),
                "k8s_writes_per_attach": sum(attach_writes.values()) / n,
                "events_per_attach": attach_writes["create events"] / n,
                "first_status_seconds_max": max(first_status, default=0.0),
                "cpu_seconds_per_attach": cpu_attach / n,
                "rss_mib_peak": rss_peak_mib(proc.pid),
            })
            log(f"attach: all {n} Ready after {seconds:.1f}s (bound {bound:.1f}s)")
            log(f"  ARM calls: {arm_summary(attach_calls)}")
            log(f"  operator k8s writes: {k8s_summary(attach_writes)}")
            done("attach")

            if "steady" in phases:
                results.update(steady(admin, resync, arm, audit, alive))
                done("steady state")
            if "drift" in phases:
                results.update(drift(emulator, layout, watcher, n, arm, audit, alive, timeout))
                done("drift")
            if "restart" in phases:
                results["rss_mib_peak"] = max(results["rss_mib_peak"], rss_peak_mib(proc.pid))
                stop_process(operator, signal.SIGKILL)
                arm.skip()
                audit.skip()
                restart_log = work / "operator-restarted.log"
                started = time.monotonic()
                operator = start_operator(plane.kubeconfig_operator, env, restart_log)
                proc = operator

                def reverified() -> tuple[bool, str]:
                    samples = scrape(metrics_port)
                    known = total(samples, "batchcompute_attachments")
                    left = samples.get("batchcompute_attachments_unverified", n)
                    return known >= n and left == 0, f"{int(known - left)}/{n} re-verified"

                wait("re-verification", reverified, started + timeout, alive, 0.2)
                results["restart_seconds"] = time.monotonic() - started
                results["rss_mib_restart"] = rss_peak_mib(proc.pid)
                time.sleep(3)  # writes that would follow the re-verification land in this window
                restart_calls, restart_writes = arm.take(), audit.take()
                results["restart_arm_writes"] = (restart_calls.count("PUT")
                                                 + restart_calls.count("DELETE"))
                results["restart_arm_reads"] = restart_calls.count("GET")
                results["restart_k8s_writes"] = sum(restart_writes.values())
                log(f"restart: {n} re-verified {results['restart_seconds']:.1f}s after start")
                log(f"  ARM calls: {arm_summary(restart_calls)}")
                log(f"  operator k8s writes: {k8s_summary(restart_writes)}")
                done("restart")
            if "detach" in phases:
                results.update(detach(admin, emulator, layout, watcher, n, arm, audit, alive,
                                      timeout))
                results["rss_mib_peak"] = max(results["rss_mib_peak"], rss_peak_mib(proc.pid))
                done("detach")
            return results
        except BaseException:
            if log_file.exists():
                print(log_file.read_text(errors="replace")[-5000:], file=sys.stderr)
            raise
        finally:
            results["load_avg_1m_end"] = load_average()
            if progress is not None:  # the results so far, with the load at the end
                progress(results)
            if watcher is not None:
                watcher.stop()
            stop_process(operator)
            emulator.stop()


def steady(admin: Admin, resync: float, arm: ArmCursor, audit: AuditCursor,
           alive: Callable[[], None]) -> dict[str, float]:
    """Three resync intervals with nothing changing: what does idling cost?"""
    window = 3 * resync
    log(f"steady state: watching for {window:g}s (3 resync intervals)")
    arm.skip()
    audit.skip()
    before = admin.list(NAMESPACE)
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        alive()
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    calls, writes = arm.take(), audit.take()
    after = admin.list(NAMESPACE)
    changed = status_changes(before, after)
    log(f"  ARM calls: {arm_summary(calls)}")
    log(f"  operator k8s writes: {k8s_summary(writes)}")
    log(f"  objects whose status changed, by field: {k8s_summary(changed)}")
    return {
        "steady_arm_reads_per_interval": calls.count("GET") / 3,
        "steady_arm_writes": calls.count("PUT") + calls.count("DELETE"),
        "steady_arm_429": calls.throttled(),
        "steady_k8s_writes": sum(writes.values()),
        "steady_not_ready": sum(1 for obj in after if not is_ready(obj)),
        "steady_status_changed": changed["(objects)"],
    }


def drift(emulator: EmulatorProcess, layout: Layout, watcher: Watcher, n: int,
          arm: ArmCursor, audit: AuditCursor, alive: Callable[[], None],
          timeout: float) -> dict[str, float]:
    """Detach up to 50 computes out of band; time until the operator has re-attached all."""
    k = min(DRIFTED, n)
    arm.skip()
    audit.skip()
    names = [f"a{j:05d}" for j in range(k)]
    started = time.monotonic()
    detached: dict[str, float] = {}  # each compute's repair is timed from its own detach
    for j, name in enumerate(names):
        ws = layout.workspace(j)
        emulator.admin("DELETE", f"computes/{ws['subscriptionId']}/{ws['resourceGroup']}/"
                                 f"{ws['name']}/{name}")
        detached[name] = time.monotonic()

    def repaired() -> tuple[bool, str]:
        again = sum(1 for name in names if watcher.ready_at.get(name, 0) > detached[name]
                    and watcher.ready.get(name))
        return again == k, f"{again}/{k} Ready again"

    wait("drift repair", repaired, started + timeout, alive)
    seconds = max(watcher.ready_at[name] - detached[name] for name in names)
    writes = audit.take_settled()
    calls = arm.take()
    log(f"drift: {k} out-of-band detaches (made over {detached[names[-1]] - started:.1f}s) "
        f"each repaired within {seconds:.1f}s")
    log(f"  ARM calls: {arm_summary(calls)}")
    log(f"  operator k8s writes: {k8s_summary(writes)}")
    return {"drifted": k, "drift_repair_seconds": seconds, "drift_puts": calls.count("PUT"),
            "drift_k8s_writes": sum(writes.values())}


def detach(admin: Admin, emulator: EmulatorProcess, layout: Layout, watcher: Watcher, n: int,
           arm: ArmCursor, audit: AuditCursor, alive: Callable[[], None],
           timeout: float) -> dict[str, float]:
    log(f"detach: deleting all {n}")
    arm.skip()
    audit.skip()
    started = time.monotonic()
    admin.delete_all(NAMESPACE)
    wait("deletion", lambda: ((g := watcher.count_gone()) >= n, f"{g}/{n} gone"),
         started + timeout, alive)
    seconds = max(watcher.gone_at.values()) - started
    computes_left = len(emulator.admin("GET", "computes"))
    writes = audit.take_settled()
    calls = arm.take()
    bound = layout.lower_bound(n, DELETE_BUCKET, DELETE_REFILL)
    log(f"detach: none left after {seconds:.1f}s; computes left {computes_left}")
    log(f"  ARM calls: {arm_summary(calls)}")
    log(f"  operator k8s writes: {k8s_summary(writes)}")
    return {
        "detach_seconds": seconds,
        "detach_lower_bound_seconds": bound,
        "detach_ratio": seconds / bound,
        "computes_left": computes_left,
        "arm_deletes_per_detach": calls.count("DELETE") / n,
        "arm_reads_per_detach": calls.count("GET") / n,
        "arm_429_detach": calls.throttled(),
        "detach_arm_429_fraction": calls.throttled() / max(1, calls.total),
        "k8s_writes_per_detach": sum(writes.values()) / n,
    }


def dump(path: Path, data: dict[str, Any]) -> None:
    """Write atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
