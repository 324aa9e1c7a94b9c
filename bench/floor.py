"""kopf's floor: the CPU kopf alone spends per attach, with the operator's settings.

An attach shows kopf four watch events of its resource: its creation, kopf's own finalizer,
the status the operator writes before it calls ARM, and the status that records the result.
This run makes the same four happen to N resources with `bench/kopf_floor.py` (kopf, handlers
that do nothing) as the only operator, and writes the two statuses itself, as the operator
would word them. `cpu_seconds_per_attach` minus this floor is what the engine, the ARM client
and the events cost; the floor itself moves only with kopf and with the machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from batchcompute_testbed.controlplane import ControlPlane
from batchcompute_testbed.stack import install, kubectl, start_operator, stop_process
from bench.kube import Admin
from bench.procstat import cpu_seconds
from bench.scenario import log, wait

FLOOR_OPERATOR = Path(__file__).resolve().parent / "kopf_floor.py"
NAMESPACE = "bench"
QUIET_S = 1.0  # no more than idle CPU for this long: kopf has handled what it was shown
STATUS_CONCURRENCY = 16


def _condition(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}


def statuses(account_id: str, workspace: dict[str, str], name: str) -> list[dict[str, Any]]:
    """The two statuses of an attach, in the operator's shape: acknowledged, then Ready."""
    compute_id = (f"/subscriptions/{workspace['subscriptionId']}/resourceGroups/"
                  f"{workspace['resourceGroup']}/providers/Microsoft.MachineLearningServices/"
                  f"workspaces/{workspace['name']}/computes/{name}")
    acknowledged = {
        "observedGeneration": 1, "provisioningState": "Creating", "computeName": name,
        "operation": {"kind": "Attach", "since": "2026-01-01T00:00:00Z"},
        "lastSyncTime": "2026-01-01T00:00:00Z",
        "conditions": [
            _condition("Ready", "False", "Attaching", f"attaching {account_id}"),
            _condition("Reconciling", "True", "Attaching", f"attaching {account_id}"),
            _condition("Stalled", "False", "Attaching", "no failure"),
        ]}
    ready = {
        "observedGeneration": 1, "provisioningState": "Succeeded", "computeId": compute_id,
        "computeName": name, "clusterResourceId": account_id, "computeLocation": "westeurope",
        "isAttachedCompute": True, "operation": None, "lastSyncTime": "2026-01-01T00:00:02Z",
        "conditions": [
            _condition("Ready", "True", "Succeeded", f"{account_id} is attached as {name}"),
            _condition("Reconciling", "False", "Succeeded", "nothing under way"),
            _condition("Stalled", "False", "Succeeded", "no failure"),
        ]}
    return [acknowledged, ready]


def _quiet(pid: int, idle_rate: float, deadline: float) -> float:
    """CPU seconds of `pid` once it has spent no more than idle CPU for QUIET_S."""
    last, since = cpu_seconds(pid), time.monotonic()
    while True:
        time.sleep(0.25)
        now = cpu_seconds(pid)
        busy = now - last > idle_rate * (time.monotonic() - since) + 0.01
        if busy:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= QUIET_S:
            return now
        if time.monotonic() > deadline:
            raise TimeoutError("the kopf floor operator did not settle")


def kopf_floor(args: argparse.Namespace, work: Path,
               docs: list[dict[str, Any]]) -> dict[str, float]:
    """Create `docs`, write their two statuses; kopf's CPU for it, per resource."""
    n = len(docs)
    with ControlPlane(run_dir=work / "controlplane" if args.keep else None) as plane:
        install(plane.kubeconfig_admin)
        kubectl(plane.kubeconfig_admin, "create", "namespace", NAMESPACE)
        admin = Admin(plane.kubeconfig_admin)
        proc = start_operator(plane.kubeconfig_operator,
                              {"BCO_NAMESPACES": NAMESPACE,
                               "BCO_RESYNC_INTERVAL": f"{args.resync:g}"},
                              work / "kopf-floor.log", args=(str(FLOOR_OPERATOR),))
        try:
            deadline = time.monotonic() + args.timeout

            def alive() -> None:
                if proc.poll() is not None:
                    raise RuntimeError("the kopf floor operator exited: see kopf-floor.log")

            shaped = [(doc["metadata"]["name"],
                       statuses(doc["spec"]["batchAccount"]["resourceId"],
                                doc["spec"]["workspace"], doc["metadata"]["name"]))
                      for doc in docs]
            # What an idle kopf spends (its watch, its liveness), taken off the result.
            time.sleep(1.0)
            idle_from, idle_cpu = time.monotonic(), cpu_seconds(proc.pid)
            time.sleep(3.0)
            idle_rate = (cpu_seconds(proc.pid) - idle_cpu) / (time.monotonic() - idle_from)

            started, cpu_start = time.monotonic(), cpu_seconds(proc.pid)
            admin.create_all(NAMESPACE, docs)

            def finalized() -> tuple[bool, str]:
                k = sum(1 for o in admin.list(NAMESPACE) if o["metadata"].get("finalizers"))
                return k == n, f"{k}/{n} with kopf's finalizer"

            wait("kopf's finalizers", finalized, deadline, alive, interval=0.5)
            cpu_created = _quiet(proc.pid, idle_rate, deadline)
            created = time.monotonic()
            for index in (0, 1):
                admin.patch_statuses(NAMESPACE, {name: both[index] for name, both in shaped},
                                     concurrency=STATUS_CONCURRENCY)
            cpu_end = _quiet(proc.pid, idle_rate, deadline)
            idle = idle_rate * (time.monotonic() - started)
            results = {
                "kopf_floor_cpu_seconds_per_attach": (cpu_end - cpu_start - idle) / n,
                # Its creation and kopf's finalizer; the rest are the two status events.
                "kopf_floor_create_cpu_seconds_per_attach":
                    (cpu_created - cpu_start - idle_rate * (created - started)) / n,
                "kopf_floor_idle_cpu_share": idle_rate,
            }
            log(f"kopf floor: {1000 * results['kopf_floor_cpu_seconds_per_attach']:.2f} ms "
                f"CPU per attach ({n} resources; idle kopf {100 * idle_rate:.1f}% of a core)")
            return results
        finally:
            stop_process(proc)
