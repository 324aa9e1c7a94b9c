"""python -m bench: see bench/__init__.py; `make bench` runs the whole set."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.floor import kopf_floor
from bench.scenario import (
    FULL,
    LARGE,
    OPERATION_S,
    POLL_INTERVAL_S,
    SMALL,
    Layout,
    dump,
    log,
    run,
)

RESULTS = Path(__file__).resolve().parent / "results"

# (key, format, goal as text, check) for the N=1000 medians and the 10 000 run.
GOALS: Sequence[tuple[str, str, str, Any]] = (
    # ratio: against the later of the throttle's floor and the last creation plus one
    # operation; ratio_throttle: against the throttle's floor alone.
    ("ratio", "{:.2f}", "<= 1.2", lambda v: v <= 1.2),
    ("ratio_throttle", "{:.2f}", "(reported)", None),
    ("detach_ratio", "{:.2f}", "<= 1.2", lambda v: v <= 1.2),
    ("ratio_100", "{:.2f}", "<= 1.5", lambda v: v <= 1.5),
    ("ratio_300", "{:.2f}", "<= 1.5", lambda v: v <= 1.5),
    ("arm_writes_per_attach", "{:.2f}", "<= 1.05", lambda v: v <= 1.05),
    ("arm_reads_per_attach", "{:.2f}", "<= 1.0", lambda v: v <= 1.0),
    ("arm_429_fraction", "{:.4f}", "<= 0.01", lambda v: v <= 0.01),
    ("k8s_writes_per_attach", "{:.2f}", "<= 5", lambda v: v <= 5.0),
    ("events_per_attach", "{:.2f}", "== 2", lambda v: v == 2.0),
    ("cpu_seconds_per_attach", "{:.4f}", "<= 0.006", lambda v: v <= 0.006),
    # kopf alone, with handlers that do nothing, for the same four watch events per attach;
    # and what the operator spends beyond it (engine, ARM client, events, status writes).
    ("kopf_floor_cpu_seconds_per_attach", "{:.4f}", "(reported)", None),
    ("cpu_seconds_over_kopf_floor", "{:.4f}", "(reported)", None),
    ("steady_arm_reads_per_interval", "{:.1f}", "<= 10", lambda v: v <= 10.0 + 10 / 3),
    ("steady_arm_writes", "{:.0f}", "0", lambda v: v == 0),
    ("steady_k8s_writes", "{:.0f}", "0", lambda v: v == 0),
    ("steady_status_changed", "{:.0f}", "0", lambda v: v == 0),
    ("drift_repair_seconds", "{:.1f}", "<= resync + 5", None),
    ("drift_puts", "{:.0f}", "== 50", lambda v: v == 50),
    ("restart_seconds", "{:.1f}", "< 30", lambda v: v < 30),
    ("restart_arm_writes", "{:.0f}", "0", lambda v: v == 0),
    ("restart_k8s_writes", "{:.0f}", "0", lambda v: v == 0),
    ("computes_left", "{:.0f}", "0", lambda v: v == 0),
    ("rss_mib_peak", "{:.1f}", "(reported)", None),
    ("rss_mib_10000", "{:.1f}", "<= 150", lambda v: v <= 150),
    ("rss_mib_restart_10000", "{:.1f}", "<= 150", lambda v: v <= 150),
    ("restart_seconds_10000", "{:.1f}", "< 60", lambda v: v < 60),
    ("restart_writes_10000", "{:.0f}", "0 (ARM + k8s)", lambda v: v == 0),
    ("ratio_10000", "{:.2f}", "(reported)", None),
    ("metrics_cpu_overhead", "{:+.1%}", "<= +10%", lambda v: v <= 0.10),
    ("create_seconds", "{:.1f}", "(reported)", None),
    ("first_status_seconds_max", "{:.2f}", "(reported)", None),
    ("load_avg_1m_start", "{:.2f}", "(reported)", None),
    ("load_avg_1m_end", "{:.2f}", "(reported)", None),
)


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return {"cpu_model": model, "cores": os.cpu_count(), "memory_gib": round(mem, 1),
            "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]}


def median_and_spread(runs: Sequence[dict[str, float]]) -> tuple[dict[str, float],
                                                                  dict[str, list[float]]]:
    keys = sorted({k for r in runs for k in r if isinstance(r[k], int | float)})
    med = {k: statistics.median([r[k] for r in runs if k in r]) for k in keys}
    spread = {k: [min(r[k] for r in runs if k in r), max(r[k] for r in runs if k in r)]
              for k in keys}
    return med, spread


class Sink:
    """bench/results/latest.json, rewritten whenever a phase ends."""

    def __init__(self, path: Path, args: argparse.Namespace) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": {"n": args.n, "repeat": args.repeat, "resync": args.resync,
                         "poll_interval": POLL_INTERVAL_S, "operation_seconds": OPERATION_S},
            "runs": {}, "summary": {}, "spread": {}, "goals": {}}

    def phase(self, label: str, results: dict[str, float]) -> None:
        self.data["runs"][label] = dict(results)
        self.write()

    def write(self) -> None:
        dump(self.path, self.data)


@contextlib.contextmanager
def workdir(args: argparse.Namespace, label: str) -> Iterator[Path]:
    """The run's directory: kept under --keep, else a temporary one."""
    if args.keep is not None:
        path = args.keep / label
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="bco-bench-") as tmp:
        yield Path(tmp)


def one_run(args: argparse.Namespace, sink: Sink, label: str, n: int, phases: Sequence[str],
            layout: Layout = SMALL, env: dict[str, str] | None = None) -> dict[str, float]:
    log(f"=== run {label}: N={n}, phases: {', '.join(phases) or 'attach only'}")
    with workdir(args, label) as work:
        return run(args, work, n, phases, layout=layout, operator_env=env,
                   progress=lambda r: sink.phase(label, r))


def floor_run(args: argparse.Namespace, sink: Sink, label: str) -> None:
    log(f"=== run {label}: N={args.n}, kopf alone")
    with workdir(args, label) as work:
        docs = [SMALL.attachment(j) for j in range(args.n)]
        sink.phase(label, {"load_avg_1m_start": os.getloadavg()[0],
                           **kopf_floor(args, work, docs),
                           "load_avg_1m_end": os.getloadavg()[0]})


def summarize(sink: Sink, args: argparse.Namespace) -> None:
    runs = sink.data["runs"]
    # n1000-1, n1000-2, ...: not n1000-no-metrics, which only attaches, without metrics
    main_runs = [r for k, r in runs.items()
                 if k.startswith(f"n{args.n}-") and k.rsplit("-", 1)[1].isdigit() and "ratio" in r]
    summary: dict[str, float] = {}
    spread: dict[str, list[float]] = {}
    if main_runs:
        summary, spread = median_and_spread(main_runs)
    for size in (100, 300):
        curve = runs.get(f"curve-{size}")
        if curve and "ratio" in curve:
            summary[f"ratio_{size}"] = curve["ratio"]
            summary[f"detach_ratio_{size}"] = curve.get("detach_ratio", 0.0)
            summary[f"create_seconds_{size}"] = curve["create_seconds"]
    big = runs.get(f"n{args.footprint}")
    if big:
        for key, name in (("rss_mib_peak", "rss_mib"), ("rss_mib_restart", "rss_mib_restart"),
                          ("restart_seconds", "restart_seconds"), ("ratio", "ratio"),
                          ("seconds", "seconds"), ("create_seconds", "create_seconds")):
            if key in big:
                summary[f"{name}_{args.footprint}"] = big[key]
        if "restart_arm_writes" in big:
            summary[f"restart_writes_{args.footprint}"] = \
                big["restart_arm_writes"] + big["restart_k8s_writes"]
    quiet = runs.get(f"n{args.n}-no-metrics")
    if quiet and main_runs:
        with_metrics = statistics.median([r["cpu_seconds_per_attach"] for r in main_runs])
        summary["cpu_seconds_per_attach_no_metrics"] = quiet["cpu_seconds_per_attach"]
        summary["metrics_cpu_overhead"] = with_metrics / quiet["cpu_seconds_per_attach"] - 1
    floor = runs.get("kopf-floor", {}).get("kopf_floor_cpu_seconds_per_attach")
    if floor is not None:
        summary["kopf_floor_cpu_seconds_per_attach"] = floor
        if "cpu_seconds_per_attach" in summary:
            summary["cpu_seconds_over_kopf_floor"] = summary["cpu_seconds_per_attach"] - floor
    sink.data["summary"] = summary
    sink.data["spread"] = spread
    goals: dict[str, Any] = {}
    for key, _, goal, check in GOALS:
        if key not in summary:
            continue
        value = summary[key]
        met = None if check is None else bool(check(value))
        if key == "drift_repair_seconds":
            met = value <= args.resync + 5
        goals[key] = {"goal": goal, "value": round(value, 4), "met": met}
    sink.data["goals"] = goals
    sink.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    sink.write()


def report(sink: Sink, args: argparse.Namespace) -> str:
    data = sink.data
    m = data["machine"]
    lines = ["", f"machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB; "
                 f"load average (1 min) at start {m['load_avg_1m']:.2f}",
             f"N={args.n}: median of {args.repeat} runs (spread min-max); "
             f"{SMALL.workspaces} workspaces over {SMALL.subscriptions} subscriptions; "
             f"N={args.footprint}: one run, {LARGE.workspaces} workspaces over "
             f"{LARGE.subscriptions} subscriptions",
             f"emulator: 50 ms latency, {OPERATION_S:g} s operations, ARM's throttle; operator: "
             f"BCO_POLL_INTERVAL={POLL_INTERVAL_S:g} BCO_RESYNC_INTERVAL={args.resync:g}",
             "", f"{'metric':<32} {'value':>10} {'spread':>17}  {'goal':<14} met",
             f"{'-' * 32} {'-' * 10} {'-' * 17}  {'-' * 14} ---"]
    for key, fmt, goal, _ in GOALS:
        if key not in data["summary"]:
            continue
        value = fmt.format(data["summary"][key])
        lo_hi = data["spread"].get(key)
        spread = f"{fmt.format(lo_hi[0])}-{fmt.format(lo_hi[1])}" if lo_hi else ""
        met = data["goals"].get(key, {}).get("met")
        lines.append(f"{key:<32} {value:>10} {spread:>17}  {goal:<14} "
                     f"{'yes' if met else 'NO' if met is False else ''}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--n", type=int, default=1000, help="attachments (default 1000)")
    p.add_argument("--repeat", type=int, default=1, help="runs of N whose median is reported")
    p.add_argument("--resync", type=float, default=20.0,
                   help="operator resync interval, seconds; steady state watches 3 of them")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="give up on any one phase after this many seconds")
    p.add_argument("--output", type=Path, default=RESULTS / "latest.json",
                   help="where the results go (rewritten as each phase ends)")
    p.add_argument("--operator-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the operator, e.g. BCO_LOG_LEVEL=DEBUG")
    p.add_argument("--curve", default="", help="also attach+detach these sizes (e.g. 100,300)")
    p.add_argument("--footprint", type=int, default=0,
                   help="also attach this many over 100 workspaces in a run of its own, then "
                        "restart the operator: memory and restart time at that size")
    p.add_argument("--metrics-cost", action="store_true",
                   help="also attach N with metrics off, for the CPU the metrics cost")
    p.add_argument("--kopf-floor", action="store_true",
                   help="also measure kopf's own CPU per attach (bench/floor.py) at N")
    p.add_argument("--attach-only", action="store_true", help="only the attach burst at N")
    p.add_argument("--keep", type=Path, default=None,
                   help="keep the operator, emulator and control-plane logs here")
    args = p.parse_args(argv)
    if args.n < 1 or args.repeat < 1:
        p.error("--n and --repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sink = Sink(args.output, args)
    sink.write()
    failures: list[str] = []

    def attempt(label: str, *a: Any, runner: Callable[..., Any] = one_run, **kw: Any) -> None:
        try:
            runner(args, sink, label, *a, **kw)
        except Exception as exc:  # the other runs still go ahead; the failure is recorded
            failures.append(f"{label}: {exc}")
            sink.data["runs"].setdefault(label, {})["error"] = str(exc)
            sink.write()
            log(f"run {label} failed: {exc}")

    for size in sorted({int(x) for x in args.curve.split(",") if x.strip()}):
        attempt(f"curve-{size}", size, ("detach",))
    phases = () if args.attach_only else FULL
    for i in range(args.repeat):
        attempt(f"n{args.n}-{i + 1}", args.n, phases)
        summarize(sink, args)
    if args.metrics_cost:
        attempt(f"n{args.n}-no-metrics", args.n, (), env={"BCO_METRICS_PORT": "0"})
    if args.kopf_floor:
        attempt("kopf-floor", runner=floor_run)
    if args.footprint:
        attempt(f"n{args.footprint}", args.footprint, ("restart",), layout=LARGE)
    summarize(sink, args)
    print(report(sink, args), flush=True)
    print(f"\nresults written to {args.output}")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
