"""Prometheus metrics, named as controller-runtime operators and ASO name theirs.

Dashboards and alerts written for controller-runtime (`controller_runtime_*`) and for Azure
Service Operator (`azure_*` ARM request metrics) work unchanged, and so do those built on the
standard `process_*` metrics (CPU, memory, file descriptors). Label values are bounded: no
resource names, ids or subscriptions appear as labels.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.metrics import MetricWrapperBase

CONTROLLER = "batchcomputeattachment"
# No `*_created` series: controller-runtime exports none, and they would double the series of
# every counter and histogram.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes...

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

reconcile_total = Counter(
    "controller_runtime_reconcile_total", "Reconciliations per controller, by result",
    ["controller", "result"], registry=REGISTRY)
reconcile_errors = Counter(
    "controller_runtime_reconcile_errors_total", "Reconciliations that ended in an error",
    ["controller"], registry=REGISTRY)
reconcile_time = Histogram(
    "controller_runtime_reconcile_time_seconds", "Time per reconciliation",
    ["controller"], buckets=_LATENCY, registry=REGISTRY)
active_workers = Gauge(
    "controller_runtime_active_workers", "Reconciliations running now",
    ["controller"], registry=REGISTRY)
max_concurrent = Gauge(
    "controller_runtime_max_concurrent_reconciles", "Reconciliations allowed to run at once",
    ["controller"], registry=REGISTRY)

arm_responses = Counter(
    "azure_successful_requests_total", "ARM requests that got a response, whatever its code",
    ["resource", "requestType", "responseCode"], registry=REGISTRY)
arm_failures = Counter(
    "azure_failed_requests_total", "ARM requests that got no response (timeout, reset)",
    ["resource", "requestType"], registry=REGISTRY)
arm_time = Histogram(
    "azure_requests_time_seconds", "ARM request duration", ["resource", "requestType"],
    buckets=_LATENCY, registry=REGISTRY)

pacing_tokens = Gauge(
    "batchcompute_arm_pacing_tokens_min",
    "Fewest tokens left in any subscription's pacing bucket, by kind", ["kind"],
    registry=REGISTRY)
pacing_wait = Counter(
    "batchcompute_arm_pacing_wait_seconds_total",
    "Time ARM calls waited for the per-subscription pacing, by kind", ["kind"],
    registry=REGISTRY)
list_pages = Histogram(
    "batchcompute_arm_list_pages", "Pages per workspace compute LIST",
    buckets=(1, 2, 3, 5, 10, 20, 50, 100, 1000), registry=REGISTRY)
operations_in_flight = Gauge(
    "batchcompute_operations_in_flight", "ARM operations sent and not yet seen to end",
    ["kind"], registry=REGISTRY)
drift_repairs = Counter(
    "batchcompute_drift_repairs_total",
    "Attachments re-attached or re-tagged after a change made outside the operator",
    registry=REGISTRY)
workspace_loops = Gauge(
    "batchcompute_workspace_loops", "Observation loops running (one per identity and workspace)",
    registry=REGISTRY)
kube_requests = Counter(
    "batchcompute_kubernetes_requests_total",
    "The operator's own Kubernetes API requests (status, events, Secrets), by verb and code",
    ["verb", "code"], registry=REGISTRY)

for _result in ("success", "error", "requeue", "requeue_after"):
    reconcile_total.labels(CONTROLLER, _result)
reconcile_errors.labels(CONTROLLER)
active_workers.labels(CONTROLLER)


class _Off:
    """Stands in for every metric when nobody reads them: each update costs one call."""

    def labels(self, *_: object, **__: object) -> _Off:
        return self

    def inc(self, *_: object) -> None:
        return None

    dec = set = observe = inc


def turn_off() -> None:
    """BCO_METRICS_PORT=0: nothing serves the metrics, so nothing keeps them either."""
    off = _Off()
    module = globals()
    for name, value in list(module.items()):
        if isinstance(value, MetricWrapperBase):
            module[name] = off
