"""python -m bench --n N [--resync S] [--timeout S]: see bench/__init__.py."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

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
from bench.procstat import cpu_seconds, rss_peak_mib
from bench.scrape import scrape, total

RESULTS = Path(__file__).resolve().parent / "results"
NAMESPACE = "bench"
SUBSCRIPTIONS = ("00000000-0000-0000-0000-0000000000b1", "00000000-0000-0000-0000-0000000000b2")
WORKSPACES = 10
LOCATION = "westeurope"
LATENCY_S = 0.05
OPERATION_S = 2.0
PAGE_SIZE = 100
EMULATOR_ARGS = ("--latency-ms", str(int(LATENCY_S * 1000)), "--operation-seconds",
                 str(OPERATION_S), "--page-size", str(PAGE_SIZE), "--throttle", "default",
                 "--log-level", "WARNING")
# ARM's published per-subscription token buckets, which the emulator enforces by default.
WRITE_BUCKET, WRITE_REFILL = 200, 10.0
DELETE_BUCKET, DELETE_REFILL = 200, 10.0
CHUNK = 200
POLL_S = 1.0


def workspace(i: int) -> dict[str, str]:
    return {"subscriptionId": SUBSCRIPTIONS[i % len(SUBSCRIPTIONS)], "resourceGroup": "ml-rg",
            "name": f"ws-{i}"}


def batch_account_id(i: int) -> str:
    ws = workspace(i)
    return (f"/subscriptions/{ws['subscriptionId']}/resourceGroups/batch-rg/providers/"
            f"Microsoft.Batch/batchAccounts/batch{i}")


def seed() -> dict[str, Any]:
    return {
        "workspaces": [{**workspace(i), "location": LOCATION} for i in range(WORKSPACES)],
        "batchAccounts": [{"subscriptionId": workspace(i)["subscriptionId"],
                           "resourceGroup": "batch-rg", "name": f"batch{i}",
                           "location": LOCATION} for i in range(WORKSPACES)],
    }


def attachment(j: int) -> dict[str, Any]:
    i = j % WORKSPACES
    return {
        "apiVersion": "batchcompute.azureml.dev/v1alpha1",
        "kind": "BatchComputeAttachment",
        "metadata": {"name": f"a{j:04d}", "namespace": NAMESPACE},
        "spec": {"workspace": workspace(i), "batchAccount": {"resourceId": batch_account_id(i)}},
    }


def per_subscription(n: int) -> Counter[str]:
    return Counter(workspace(j % WORKSPACES)["subscriptionId"] for j in range(n))


def lower_bound(n: int, bucket: int, refill: float, tail: float) -> float:
    """The throttle's floor: a subscription's writes beyond its bucket at the refill rate,
    plus one long-running operation and its round trips."""
    return max(max(0, k - bucket) / refill for k in per_subscription(n).values()) + tail


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def create_all(admin: Path, n: int) -> None:
    docs = [attachment(j) for j in range(n)]
    chunks = [docs[k:k + CHUNK] for k in range(0, n, CHUNK)]

    def create(chunk: list[dict[str, Any]]) -> None:
        kubectl(admin, "create", "-f", "-", stdin=yaml.safe_dump_all(chunk))

    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(create, chunk) for chunk in chunks]:
            future.result()


def list_bca(admin: Path) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(
        kubectl(admin, "get", "bca", "-n", NAMESPACE, "-o", "json"))["items"]
    return items


def is_ready(obj: dict[str, Any]) -> bool:
    generation = obj["metadata"].get("generation")
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True"
                        and cond.get("observedGeneration", generation) == generation)
    return False


def poll(what: str, check: Callable[[], tuple[bool, str]], deadline: float,
         alive: Callable[[], None]) -> None:
    last_report = 0.0
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
        time.sleep(POLL_S)


def status_changes(before: list[dict[str, Any]],
                   after: list[dict[str, Any]]) -> Counter[str]:
    """For each status field (conditions by type), how many objects saw it change; the
    number of objects with any change under "(objects)"."""
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


def steady(admin: Path, resync: float, seen: list[dict[str, Any]], arm: ArmCursor,
           audit: AuditCursor, alive: Callable[[], None], results: dict[str, float]) -> None:
    """Three resync intervals with nothing changing: what does idling cost?"""
    window = 3 * resync
    log(f"steady state: watching for {window:g}s (3 resync intervals)")
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        alive()
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    steady_calls, steady_writes = arm.take(), audit.take()
    after = list_bca(admin)
    changed = status_changes(seen, after)
    results.update({
        "steady_arm_reads_per_interval": steady_calls.count("GET") / 3,
        "steady_arm_writes": steady_calls.count("PUT") + steady_calls.count("DELETE"),
        "steady_arm_429": steady_calls.throttled(),
        "steady_k8s_writes": sum(steady_writes.values()),
        "steady_not_ready": sum(1 for obj in after if not is_ready(obj)),
        "steady_status_changed": changed["(objects)"],
    })
    log(f"  ARM calls: {arm_summary(steady_calls)}")
    log(f"  operator k8s writes: {k8s_summary(steady_writes)}")
    log(f"  objects whose status changed, by field: {k8s_summary(changed)}")


DRIFTED = 50


def drift(emulator: EmulatorProcess, admin: Path, n: int, arm: ArmCursor, audit: AuditCursor,
          alive: Callable[[], None], *, started_at: float, deadline: float) -> dict[str, float]:
    """Detach up to 50 computes out of band; time until the operator has re-attached all."""
    k = min(DRIFTED, n)
    arm.skip()
    audit.skip()
    for j in range(k):
        ws = workspace(j % WORKSPACES)
        emulator.admin("DELETE", f"computes/{ws['subscriptionId']}/{ws['resourceGroup']}/"
                                 f"{ws['name']}/a{j:04d}")
    gone = {f"a{j:04d}" for j in range(k)}

    def repaired() -> tuple[bool, str]:
        computes = emulator.admin("GET", "computes")
        back = sum(1 for c in computes if c["compute"]["name"] in gone
                   and c["compute"]["properties"]["provisioningState"] == "Succeeded")
        ready = sum(1 for obj in list_bca(admin)
                    if obj["metadata"]["name"] in gone and is_ready(obj))
        return back == k and ready == k, f"{back}/{k} re-attached, {ready}/{k} Ready"

    poll("drift repair", repaired, deadline, alive)
    seconds = time.monotonic() - started_at
    calls, writes = arm.take(), audit.take()
    log(f"drift: {k} out-of-band detaches repaired after {seconds:.1f}s")
    log(f"  ARM calls: {arm_summary(calls)}")
    log(f"  operator k8s writes: {k8s_summary(writes)}")
    return {"drifted": k, "drift_repair_seconds": seconds, "drift_puts": calls.count("PUT"),
            "drift_k8s_writes": sum(writes.values())}


def arm_summary(calls: ArmCalls) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(calls.breakdown().items())) or "none"


def k8s_summary(writes: Counter[str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(writes.items())) or "none"


FULL = ("steady", "drift", "restart", "detach")


def run(args: argparse.Namespace, work: Path, n: int | None = None,
        phases: Sequence[str] = FULL) -> dict[str, float]:
    """One fresh control plane, emulator and operator; attach N, then the chosen phases."""
    n = args.n if n is None else n
    resync: float = args.resync
    timeout: float = args.timeout
    results: dict[str, float] = {"n": n, "resync_interval_seconds": resync}
    with ControlPlane(audit_log=True) as plane:
        admin = plane.kubeconfig_admin
        assert plane.audit_log_path is not None
        log(f"control plane up at {plane.server}")
        emulator = EmulatorProcess(work / "emulator", EMULATOR_ARGS, seed())
        operator = None
        log_file = work / "operator.log"
        try:
            emulator.start()
            config = emulator.admin("GET", "config")
            log(f"emulator at {emulator.arm_url}: latency {config['latency_ms']} ms, "
                f"operations {config['operation_seconds']} s, page size {config['page_size']}, "
                f"throttle {json.dumps(config['throttle'])}")
            install(admin)
            kubectl(admin, "create", "namespace", NAMESPACE)
            metrics_port = free_port()
            operator_env = {
                **emulator.operator_env(), "BCO_POLL_INTERVAL": "2",
                "BCO_METRICS_PORT": str(metrics_port),
                "BCO_RESYNC_INTERVAL": f"{resync:g}", "BCO_NAMESPACES": NAMESPACE,
                **dict(kv.split("=", 1) for kv in args.operator_env)}
            operator = start_operator(plane.kubeconfig_operator, operator_env, log_file)
            proc = operator
            log(f"operator running (pid {proc.pid})")

            def alive() -> None:
                plane.check_alive()
                if operator is None or operator.poll() is not None:
                    raise RuntimeError("the operator exited")
                if emulator.proc is None or emulator.proc.poll() is not None:
                    raise RuntimeError("the emulator exited")

            arm, audit = ArmCursor(emulator), AuditCursor(plane.audit_log_path)
            time.sleep(1)  # let the operator's start-up listing settle before the marks
            arm.skip()
            audit.skip()

            # 1-3, 6: the attach burst.
            log(f"attach: creating {n} BatchComputeAttachments in chunks of {CHUNK}")
            cpu_start = cpu_seconds(proc.pid)
            started = time.monotonic()
            create_all(admin, n)
            results["create_seconds"] = time.monotonic() - started
            log(f"attach: created in {results['create_seconds']:.1f}s; waiting for Ready")

            seen: list[dict[str, Any]] = []

            def all_ready() -> tuple[bool, str]:
                items = list_bca(admin)
                seen[:] = items
                ready = sum(1 for obj in items if is_ready(obj))
                return len(items) == n and ready == n, f"{ready}/{n} Ready"

            poll("Ready", all_ready, started + timeout, alive)
            seconds = time.monotonic() - started
            cpu_attach = cpu_seconds(proc.pid) - cpu_start
            attach_calls, attach_writes = arm.take(), audit.take()
            bound = lower_bound(n, WRITE_BUCKET, WRITE_REFILL, OPERATION_S + 2 * LATENCY_S)
            results.update({
                "seconds": seconds,
                "lower_bound_seconds": bound,
                "ratio": seconds / bound,
                "arm_writes_per_attach": attach_calls.count("PUT") / n,
                "arm_reads_per_attach": attach_calls.count("GET") / n,
                "arm_requests_attach": attach_calls.total,
                "arm_429_attach": attach_calls.throttled(),
                "arm_429_fraction": attach_calls.throttled() / max(1, attach_calls.total),
                "k8s_writes_per_attach": sum(attach_writes.values()) / n,
                "cpu_seconds_per_attach": cpu_attach / n,
            })
            log(f"attach: all {n} Ready after {seconds:.1f}s")
            log(f"  ARM calls: {arm_summary(attach_calls)}")
            log(f"  operator k8s writes: {k8s_summary(attach_writes)}")

            results["rss_mib_peak"] = rss_peak_mib(proc.pid)

            # 4: steady state over three resync intervals.
            if "steady" in phases:
                steady(admin, resync, seen, arm, audit, alive, results)

            # 5: drift at scale: computes detached behind the operator's back.
            if "drift" in phases:
                results.update(drift(emulator, admin, n, arm, audit, alive,
                                     started_at=time.monotonic(),
                                     deadline=time.monotonic() + timeout))

            # 6: restart: kill -9 with N Ready, start again, everything re-verified.
            if "restart" in phases:
                results["rss_mib_peak"] = max(results["rss_mib_peak"], rss_peak_mib(proc.pid))
                stop_process(operator, signal.SIGKILL)
                arm.skip()
                audit.skip()
                restart_log = work / "operator-restarted.log"
                started = time.monotonic()
                operator = start_operator(plane.kubeconfig_operator, operator_env, restart_log)
                proc = operator

                def reverified() -> tuple[bool, str]:
                    samples = scrape(metrics_port)
                    known = total(samples, "batchcompute_attachments")
                    left = samples.get("batchcompute_attachments_unverified", n)
                    done = int(known - left)
                    return known >= n and left == 0, f"{done}/{n} re-verified"

                poll("re-verification", reverified, started + timeout, alive)
                results["restart_seconds"] = time.monotonic() - started
                time.sleep(3)  # writes that would follow the re-verification land in this window
                restart_calls, restart_writes = arm.take(), audit.take()
                results["restart_arm_writes"] = (restart_calls.count("PUT")
                                                 + restart_calls.count("DELETE"))
                results["restart_arm_reads"] = restart_calls.count("GET")
                results["restart_k8s_writes"] = sum(restart_writes.values())
                log(f"restart: {n} re-verified {results['restart_seconds']:.1f}s after start")
                log(f"  ARM calls: {arm_summary(restart_calls)}")
                log(f"  operator k8s writes: {k8s_summary(restart_writes)}")

            if "detach" not in phases:
                return results

            # 7: the detach burst.
            log(f"detach: deleting all {n}")
            started = time.monotonic()
            kubectl(admin, "delete", "bca", "--all", "-n", NAMESPACE, "--wait=false")

            def none_left() -> tuple[bool, str]:
                left = len(list_bca(admin))
                return left == 0, f"{left}/{n} left"

            poll("deletion", none_left, started + timeout, alive)
            detach_seconds = time.monotonic() - started
            computes_left = len(emulator.admin("GET", "computes"))
            detach_calls, detach_writes = arm.take(), audit.take()
            detach_bound = lower_bound(n, DELETE_BUCKET, DELETE_REFILL,
                                       OPERATION_S + 2 * LATENCY_S)
            results.update({
                "detach_seconds": detach_seconds,
                "detach_lower_bound_seconds": detach_bound,
                "detach_ratio": detach_seconds / detach_bound,
                "computes_left": computes_left,
                "arm_deletes_per_detach": detach_calls.count("DELETE") / n,
                "arm_reads_per_detach": detach_calls.count("GET") / n,
                "arm_429_detach": detach_calls.throttled(),
                "detach_arm_429_fraction": detach_calls.throttled() / max(1, detach_calls.total),
                "k8s_writes_per_detach": sum(detach_writes.values()) / n,
            })
            log(f"detach: none left after {detach_seconds:.1f}s; computes left {computes_left}")
            log(f"  ARM calls: {arm_summary(detach_calls)}")
            log(f"  operator k8s writes: {k8s_summary(detach_writes)}")

            # 8: memory, read before the operator stops (the larger of both processes').
            results["rss_mib_peak"] = max(results["rss_mib_peak"], rss_peak_mib(proc.pid))
            return results
        except BaseException:
            if log_file.exists():
                print(log_file.read_text()[-5000:], file=sys.stderr)
            raise
        finally:
            stop_process(operator)
            emulator.stop()


ROWS: Sequence[tuple[str, str, str]] = (
    ("create_seconds", "{:.1f}", "kubectl create of all N"),
    ("seconds", "{:.1f}", "first create -> all Ready (1 s polls)"),
    ("lower_bound_seconds", "{:.1f}", "attach lower bound"),
    ("ratio", "{:.2f}", "seconds / lower bound"),
    ("arm_writes_per_attach", "{:.2f}", "PUT / N"),
    ("arm_reads_per_attach", "{:.2f}", "GET / N (workspace, computes, operation polls)"),
    ("arm_429_fraction", "{:.4f}", "429 / ARM requests, attach phase"),
    ("k8s_writes_per_attach", "{:.2f}", "operator create/update/patch/delete / N"),
    ("cpu_seconds_per_attach", "{:.4f}", "operator utime+stime over attach / N"),
    ("steady_arm_reads_per_interval", "{:.1f}", "ARM GETs per resync interval"),
    ("steady_arm_writes", "{:.0f}", "ARM PUT+DELETE in 3 intervals"),
    ("steady_k8s_writes", "{:.0f}", "operator k8s writes in 3 intervals"),
    ("steady_status_changed", "{:.0f}", "objects whose status changed in 3 intervals"),
    ("drift_repair_seconds", "{:.1f}", "50 out-of-band detaches -> all Ready again"),
    ("drift_puts", "{:.0f}", "PUTs made to repair them (goal: exactly 50)"),
    ("restart_seconds", "{:.1f}", "kill -9, start -> every resource re-verified"),
    ("restart_arm_writes", "{:.0f}", "ARM PUT+DELETE after the restart"),
    ("restart_k8s_writes", "{:.0f}", "operator k8s writes after the restart"),
    ("detach_seconds", "{:.1f}", "delete --all -> none left (1 s polls)"),
    ("detach_lower_bound_seconds", "{:.1f}", "detach lower bound"),
    ("detach_ratio", "{:.2f}", "detach_seconds / lower bound"),
    ("arm_deletes_per_detach", "{:.2f}", "DELETE / N"),
    ("detach_arm_429_fraction", "{:.4f}", "429 / ARM requests, detach phase"),
    ("computes_left", "{:.0f}", "computes in the emulator after detach"),
    ("rss_mib_peak", "{:.1f}", "operator VmHWM"),
    ("rss_mib_5000", "{:.1f}", "operator VmHWM, attaching 5000 (run of its own)"),
    ("ratio_5000", "{:.2f}", "attach ratio at 5000"),
)


def report(results: dict[str, float]) -> str:
    n, resync = int(results["n"]), results["resync_interval_seconds"]
    subs = per_subscription(n)
    lines = [
        "",
        f"BatchComputeAttachment benchmark, N={n}, {WORKSPACES} workspaces over "
        f"{len(SUBSCRIPTIONS)} subscriptions ({', '.join(str(v) for v in subs.values())} "
        "attachments each)",
        f"emulator: latency {LATENCY_S * 1000:.0f} ms, operations {OPERATION_S:g} s, page size "
        f"{PAGE_SIZE}; per-subscription throttle reads 250 +25/s, writes {WRITE_BUCKET} "
        f"+{WRITE_REFILL:g}/s, deletes {DELETE_BUCKET} +{DELETE_REFILL:g}/s",
        f"operator: BCO_POLL_INTERVAL=2 BCO_RESYNC_INTERVAL={resync:g} "
        f"BCO_NAMESPACES={NAMESPACE}",
        f"lower bound = max over subscriptions of (max(0, writes - {WRITE_BUCKET})/"
        f"{WRITE_REFILL:g} + {OPERATION_S:g} + 2*{LATENCY_S:g}) (attach, writes = PUTs needed)",
        f"              max over subscriptions of (max(0, deletes - {DELETE_BUCKET})/"
        f"{DELETE_REFILL:g} + {OPERATION_S:g} + 2*{LATENCY_S:g}) (detach)",
        "",
        f"{'metric':<30} {'value':>10}  note",
        f"{'-' * 30} {'-' * 10}  {'-' * 44}",
    ]
    for key, fmt, note in ROWS:
        if key in results:
            lines.append(f"{key:<30} {fmt.format(results[key]):>10}  {note}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--n", type=int, default=1000, help="attachments (default 1000)")
    p.add_argument("--resync", type=float, default=20.0,
                   help="operator resync interval, seconds; steady state watches 3 of them")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="give up on any one phase after this many seconds")
    p.add_argument("--output", type=Path, default=RESULTS / "latest.json",
                   help="where the flat JSON of results goes")
    p.add_argument("--operator-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the operator, e.g. BCO_LOG_LEVEL=DEBUG")
    p.add_argument("--curve", default="",
                   help="also attach+detach these sizes (e.g. 100,300) and print the scaling curve")
    p.add_argument("--footprint", type=int, default=0,
                   help="also attach this many in a run of its own and report its peak RSS")
    p.add_argument("--attach-only", action="store_true",
                   help="run only the attach burst at N (quick memory and speed checks)")
    p.add_argument("--keep", type=Path, default=None,
                   help="keep the operator and emulator logs in this directory")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be at least 1")
    return args


def one_run(args: argparse.Namespace, n: int, phases: Sequence[str],
            label: str) -> dict[str, float]:
    if args.keep is not None:
        work = args.keep / label
        work.mkdir(parents=True, exist_ok=True)
        return run(args, work, n, phases)
    with tempfile.TemporaryDirectory(prefix="bco-bench-") as tmp:
        return run(args, Path(tmp), n, phases)


def curve_report(points: Sequence[dict[str, float]]) -> str:
    lines = ["", "scaling curve (attach + detach; each N in a fresh run)",
             f"{'N':>6} {'attach s':>9} {'bound':>7} {'ratio':>6} {'ARM calls':>10} "
             f"{'calls/N':>8} {'k8s writes/N':>13} {'detach s':>9} {'detach ratio':>13}"]
    for r in points:
        calls = r["arm_requests_attach"]
        lines.append(
            f"{int(r['n']):>6} {r['seconds']:>9.1f} {r['lower_bound_seconds']:>7.1f} "
            f"{r['ratio']:>6.2f} {calls:>10.0f} {calls / r['n']:>8.2f} "
            f"{r['k8s_writes_per_attach']:>13.2f} {r['detach_seconds']:>9.1f} "
            f"{r['detach_ratio']:>13.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sorted({int(x) for x in args.curve.split(",") if x.strip()} - {args.n})
    points = [one_run(args, size, ("detach",), f"curve-{size}") for size in sizes]
    results = one_run(args, args.n, () if args.attach_only else FULL, f"n-{args.n}")
    if args.footprint:
        big = one_run(args, args.footprint, (), f"footprint-{args.footprint}")
        results[f"rss_mib_{args.footprint}"] = big["rss_mib_peak"]
        results[f"seconds_{args.footprint}"] = big["seconds"]
        results[f"ratio_{args.footprint}"] = big["ratio"]
    print(report(results), flush=True)
    if points:
        print(curve_report(sorted([*points, results], key=lambda r: r["n"])), flush=True)
        for point in points:
            for key in ("seconds", "ratio", "arm_requests_attach", "detach_seconds"):
                results[f"curve_{int(point['n'])}_{key}"] = point[key]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    rounded = {k: v if isinstance(v, int) else round(v, 4) for k, v in results.items()}
    args.output.write_text(json.dumps(rounded, indent=2, sort_keys=True) + "\n")
    print(f"\nresults written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
