"""The metrics' shape: bounded labels, the census and leader gauges, and a dashboard that reads
only what the operator exports, filtered so other operators' series never mix in.

(The integration suite checks the values against what ARM and the API server saw.)
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tests.dashboard import dashboard_metric_names, load, metric_names, panels, queries

from batchcompute_operator import metrics
from batchcompute_operator.health import Census
from batchcompute_operator.workspace.client import ArmClient, _resource
from batchcompute_operator.workspace.errors import ArmError
from batchcompute_operator.workspace.pacing import SubscriptionPacer
from batchcompute_operator.workspace.transport import AiohttpTransport

# Label names a series may carry: none of them names a resource, workspace or subscription.
LABELS = {"controller", "result", "resource", "requestType", "responseCode", "kind", "state",
          "ready", "verb", "code", "name", "le"}
RESOURCES = {"computes", "workspaces", "operations", "subscriptions", "other"}
SUB = "00000000-0000-0000-0000-000000000001"
WS = (f"/subscriptions/{SUB}/resourceGroups/ml-rg/providers/Microsoft.MachineLearningServices"
      "/workspaces/ml-ws")


@dataclass
class FakeEngine:
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    unverified: int = 0

    def census(self) -> Counter[tuple[str, str]]:
        return self.counts


@dataclass
class FakeGate:
    active: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class FakeRuntime:
    engine: FakeEngine
    gate: FakeGate


def scrape(*collectors: Any) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        found.setdefault(family.name, [])
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def census(active: bool) -> Census:
    gate = FakeGate()
    if active:
        gate.active.set()
    engine = FakeEngine(Counter({("Succeeded", "True"): 3, ("Failed", "False"): 1}), 2)
    return Census(FakeRuntime(engine, gate))  # type: ignore[arg-type]


def test_the_acting_replica_reports_attachments_by_state_and_ready() -> None:
    found = scrape(census(active=True))
    assert found["leader_election_master_status"] == [({"name": "batchcompute-operator"}, 1.0)]
    assert sorted(found["batchcompute_attachments"], key=str) == sorted(
        [({"state": "Succeeded", "ready": "True"}, 3.0),
         ({"state": "Failed", "ready": "False"}, 1.0)], key=str)
    assert found["batchcompute_attachments_unverified"] == [({}, 2.0)]


def test_a_replica_standing_by_reports_no_attachments() -> None:
    """Summed over an HA pair, every attachment is counted once: by the acting replica."""
    found = scrape(census(active=False))
    assert found["leader_election_master_status"] == [({"name": "batchcompute-operator"}, 0.0)]
    assert found["batchcompute_attachments"] == []
    assert found["batchcompute_attachments_unverified"] == []


def registered_names() -> set[str]:
    """Every sample name the operator's registry and census can export."""
    names: set[str] = set()
    for family in [*metrics.REGISTRY.collect(), *census(active=True).collect()]:
        names.add(family.name)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
        names.update(family.name + s for s in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def test_every_label_is_bounded() -> None:
    for family in [*metrics.REGISTRY.collect(), *census(active=True).collect()]:
        declared = set(getattr(family, "_labelnames", ()))
        for sample in family.samples:
            declared |= set(sample.labels)
        assert declared <= LABELS, (family.name, declared - LABELS)


@pytest.mark.parametrize(("path", "expected"), [
    (f"{WS}/computes", "computes"),
    (f"{WS}/computes/mybatch", "computes"),
    (f"{WS}", "workspaces"),
    (f"/subscriptions/{SUB}/providers/Microsoft.MachineLearningServices/locations/westeurope/"
     "computeOperationsStatus/0f4a2a2e-2b1c-4c55-9f0e-7d5b9c7c1a11", "operations"),
    (f"/subscriptions/{SUB}/providers/Microsoft.MachineLearningServices/locations/westeurope/"
     "computeOperationsResults/0f4a2a2e-2b1c-4c55-9f0e-7d5b9c7c1a11", "operations"),
    ("/subscriptions", "subscriptions"),
    ("/mybatch-compute-name", "other"),
    (f"/subscriptions/{SUB}", "other"),
    ("/", "other"),
])
def test_the_resource_label_names_a_kind_never_a_name(path: str, expected: str) -> None:
    label = _resource(httpx.URL(f"https://management.azure.com{path}"))
    assert label == expected
    assert label in RESOURCES


def test_every_metric_the_dashboard_reads_is_exported() -> None:
    names = dashboard_metric_names()
    assert names, "no PromQL found in the dashboard"
    missing = {name: sorted(exprs) for name, exprs in names.items()
               if name not in registered_names()}
    assert not missing, missing


def test_the_dashboard_reads_only_this_operators_series() -> None:
    """controller_runtime_* and azure_* are shared names (every controller-runtime operator,
    Azure Service Operator): every selector of a panel names this operator's namespace and
    replicas, and the controller-runtime ones this controller."""
    dashboard = load()
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:
        for name, matchers in re.findall(r"([A-Za-z_:][\w:]*)\{([^}]*)\}", expr):
            assert 'namespace="$namespace"' in matchers and 'pod=~"$pod"' in matchers, expr
            if name.startswith("controller_runtime_"):
                assert 'controller="batchcomputeattachment"' in matchers, expr
            if name == "leader_election_master_status":
                assert 'name="batchcompute-operator"' in matchers, expr
    variables = [v for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert {v["name"] for v in variables} == {"namespace", "pod"}
    for variable in variables:
        assert 'name="batchcompute-operator"' in variable["query"]["query"], variable
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
            assert panel["targets"], panel["title"]
    assert dashboard["uid"] == "batchcompute-operator"


def test_every_query_names_a_metric_before_its_matchers() -> None:
    """A bare metric name (no `{}`) would escape the namespace filter above."""
    for expr in queries(load()):
        bare = {n for n in metric_names(expr) if not re.search(rf"\b{re.escape(n)}\{{", expr)}
        assert not bare, (expr, bare)


def test_the_readme_lists_every_metric_with_its_labels() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Observe it", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z_]+)`.*$", section, re.M)}
    process = next(row for name, row in rows.items() if name.startswith("process_"))
    for family in [*metrics.REGISTRY.collect(), *census(active=True).collect()]:
        if family.name.startswith("process_"):
            assert f"`{family.name}" in process, family.name
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name in rows, f"{name} is not in README's metrics table"
        labels = set(getattr(family, "_labelnames", ())) | {
            k for s in family.samples for k in s.labels if k != "le"}
        for label in labels:
            assert f"`{label}`" in rows[name], (name, label)


def test_no_created_series() -> None:
    """controller-runtime exports none; they would double the series of every counter."""
    names = {s.name for family in metrics.REGISTRY.collect() for s in family.samples}
    assert not [n for n in names if n.endswith("_created")]


async def test_a_request_without_an_answer_is_counted_once_and_not_resent() -> None:
    """The ARM transport (aiohttp) must not send a PUT again by itself when the connection
    drops: the client decides (it re-observes first), and the metrics count what was sent."""
    seen: list[bytes] = []

    async def answer_once_then_drop(reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            seen.append(head.split(b" ", 1)[0])
            if len(seen) > 1:  # the PUT, on the connection the GET left open: no answer
                writer.close()
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 2\r\n\r\n{}")
            await writer.drain()

    server = await asyncio.start_server(answer_once_then_drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    http = httpx.AsyncClient(transport=AiohttpTransport(verify=False, limit=4, timeout=5))
    client = ArmClient(f"http://127.0.0.1:{port}", "2020-02-02", StaticTokens(), SubscriptionPacer(
        enabled=False), http=http, allow_insecure_http=True)
    failed = metrics.arm_failures.labels("computes", "PUT")
    before = failed._value.get()
    try:
        await client.call("GET", client.url_for(f"{WS}/computes"), SUB)
        with pytest.raises(ArmError) as err:
            await client.call("PUT", client.url_for(f"{WS}/computes/mybatch"), SUB, body={})
    finally:
        await http.aclose()
        server.close()
        await server.wait_closed()
    assert err.value.code == "ConnectionError" and err.value.retryable
    assert seen == [b"GET", b"PUT"]  # sent once: nothing resent behind the client's back
    assert failed._value.get() == before + 1


class StaticTokens:
    key = "test-principal"

    async def __call__(self) -> str:
        return "token"

    def invalidate(self, token: str | None = None) -> None:
        return None
