"""What a platform team sees of the operator: /metrics, JSON logs and events.

The metrics test drives one operator through an attach, a failed attach, an attach whose PUT
got no answer, a throttled burst, an out-of-band detach and the detach of everything, then
checks the scrape (parsed by prometheus-client, as Prometheus would) against what the other
side saw: the emulator's request log for the ARM metrics, the API server's events for the
Kubernetes ones, the resources' status for the attachments gauge. The Grafana dashboard's
every metric is in that scrape.

The log tests run the operator with BCO_LOG_FORMAT=json: every line is one JSON object, lines
about a resource name it (kopf's and the engine's), probes write nothing at the default level,
and no token, identity header or client secret appears at any level.

The emulator is shared by the session: the autouse fixture puts its settings back.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes.client import CoreV1Api, RbacAuthorizationV1Api
from observing import last_seq
from operator_proc import Attachments, OperatorProcess, Workspace
from prometheus_client.parser import text_string_to_metric_families
from tests.dashboard import dashboard_metric_names
from waiting import eventually, wait_for

COMPONENT = "batchcompute-operator"
CONTROLLER = "batchcomputeattachment"
# The emulator's request targets and the `resource` label the operator gives each.
ARM_RESOURCE = {"list": "computes", "compute": "computes", "workspace": "workspaces",
                "operation": "operations"}
NOT_ARM = {"identity", "subscription"}  # token requests; the token-less readiness probe
# Every label a series may carry, and the values the bounded ones may take.
LABEL_VALUES: dict[str, re.Pattern[str]] = {
    "controller": re.compile(CONTROLLER),
    "result": re.compile(r"success|error|requeue|requeue_after"),
    "resource": re.compile(r"computes|workspaces|operations|subscriptions|other"),
    "requestType": re.compile(r"GET|PUT|DELETE"),
    "responseCode": re.compile(r"[1-5]\d\d"),
    "kind": re.compile(r"reads|writes|deletes|Attach|Detach"),
    "state": re.compile(r"[A-Z][A-Za-z]+"),  # ARM's provisioning states, and None
    "ready": re.compile(r"True|False|Unknown"),
    "verb": re.compile(r"get|post|patch|put|delete"),
    "code": re.compile(r"[1-5]\d\d|none"),
    "name": re.compile(COMPONENT),
    "le": re.compile(r"[0-9.e+]+|\+Inf"),
}
THROTTLE = {"reads": {"bucket": 10000, "refill": 1000},
            "writes": {"bucket": 2, "refill": 1},  # a burst of six PUTs overruns it
            "deletes": {"bucket": 10000, "refill": 1000}}
POD_ID = "batchcompute-operator-6c9f8d7b5-x7k2q"

Samples = dict[str, list[tuple[dict[str, str], float]]]


pytestmark = pytest.mark.usefixtures("restore_emulator")  # it changes the shared emulator


# -- helpers ---------------------------------------------------------------------------------


def scrape(operator: OperatorProcess) -> tuple[set[str], Samples]:
    """Family names (with or without samples), and every sample by its name."""
    text = httpx.get(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).text
    families: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return families, samples


def by_labels(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(have[k] for k in labels): value for have, value in samples.get(name, [])}


def total(samples: Samples, name: str, /, **labels: str) -> float:
    return sum(value for have, value in samples.get(name, [])
               if all(have.get(k) == v for k, v in labels.items()))


def arm_log(emulator: Any, since: int) -> tuple[Counter[tuple[str, ...]], Counter[tuple[str, ...]]]:
    """What the emulator logged from this operator: answered requests by (resource, method,
    status), and requests it dropped without an answer by (resource, method)."""
    answered: Counter[tuple[str, ...]] = Counter()
    unanswered: Counter[tuple[str, ...]] = Counter()
    for entry in emulator.requests(since):
        if entry["target"] in NOT_ARM:
            continue
        resource = ARM_RESOURCE[entry["target"]]
        if entry["status"] is None:
            unanswered[(resource, entry["method"])] += 1
        else:
            answered[(resource, entry["method"], str(entry["status"]))] += 1
    return answered, unanswered


def compute_regex(ws: Workspace, name: str) -> str:
    return f"/workspaces/{re.escape(ws.name)}/computes/{re.escape(name)}$"


def census(attachments: Attachments) -> dict[tuple[str, str], float]:
    """Attachments by (provisioningState, Ready status), as kubectl shows them."""
    counts: Counter[tuple[str, str]] = Counter()
    items = attachments.custom.list_namespaced_custom_object(
        "batchcompute.azureml.dev", "v1alpha1", attachments.namespace,
        "batchcomputeattachments")["items"]
    for obj in items:
        status = obj.get("status") or {}
        ready = next((c["status"] for c in status.get("conditions", [])
                      if c["type"] == "Ready"), "Unknown")
        counts[(status.get("provisioningState") or "None", ready)] += 1
    return {key: float(n) for key, n in counts.items()}


def our_events(attachments: Attachments) -> list[Any]:
    return list(attachments.core.list_namespaced_event(attachments.namespace).items)


def json_lines(operator: OperatorProcess) -> list[dict[str, Any]]:
    lines = []
    for number, text in enumerate(operator.log().splitlines(), 1):
        try:
            line = json.loads(text)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {text!r}") from None
        assert isinstance(line, dict), (number, text)
        assert isinstance(line.get("time"), str) and line["time"].endswith("Z"), line
        assert line.get("level") in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), line
        assert isinstance(line.get("message"), str), line
        lines.append(line)
    assert lines
    return lines


def probe(operator: OperatorProcess, times: int = 5) -> None:
    """What the kubelet and Prometheus do all day."""
    for _ in range(times):
        for port, path in ((operator.health_port, "/healthz"), (operator.health_port, "/readyz"),
                           (operator.metrics_port, "/metrics")):
            assert httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code == 200


def assert_no_probe_lines(lines: list[dict[str, Any]]) -> None:
    probes = [line for line in lines
              if re.search(r"/healthz|/readyz|/metrics|GET /|aiohttp\.access", json.dumps(line))]
    assert not probes, probes


def assert_lines_name_their_resource(lines: list[dict[str, Any]], namespace: str,
                                     uids: dict[str, str]) -> None:
    """kopf's lines about an object, and any line that names one, carry it."""
    for line in lines:
        mentioned = [n for n in uids if f"{namespace}/{n}" in line["message"]]
        if line["logger"] == "kopf.objects" or mentioned:
            assert line.get("namespace") == namespace, line
            assert line.get("name") in uids, line
            assert line.get("uid") == uids[line["name"]], line


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert len(secret) >= 8
        assert secret not in text, f"a secret is in the log: {secret[:4]}..."
    assert "eyJ" not in text  # every token the emulator issues is a JWT
    assert not re.search(r"(?i)bearer\s+(?!\*\*\*)\S", text)


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_agree_with_what_arm_and_the_api_server_saw(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    since = last_seq(emulator)
    operator = start_operator()
    names: list[str] = []

    def create(name: str, **spec: Any) -> None:
        attachments.create(name, workspace.spec(**spec))
        names.append(name)

    def metric(name: str, /, **labels: str) -> float:
        return total(scrape(operator)[1], name, **labels)

    # An attach, seen in flight while its operation runs.
    emulator.set_config({"operation_seconds": 3})
    create("attached")
    wait_for(lambda: metric("batchcompute_operations_in_flight", kind="Attach") == 1,
             timeout=20, message="one attach in flight")
    attachments.wait_condition("attached", "True", reason="Attached")
    emulator.set_config({"operation_seconds": 1})
    # A failed attach: the Batch account does not exist, the operation ends Failed.
    create("missing-account", batchAccount={"resourceGroup": workspace.batch_resource_group,
                                            "accountName": "nosuchaccount"})
    attachments.wait_condition("missing-account", "False", reason="ResourceNotFound")
    # An attach whose PUT gets no answer at all; the next one works.
    emulator.add_fault({"method": "PUT", "path_regex": compute_regex(workspace, "dropped"),
                        "count": 1, "action": {"close": True}})
    create("dropped")
    attachments.wait_condition("dropped", "True", reason="Attached", timeout=40)
    # A burst of attaches into a subscription that allows two writes and one more a second.
    emulator.set_config({"throttle": THROTTLE})
    burst = [f"burst-{i}" for i in range(6)]
    for name in burst:
        create(name)
    for name in burst:
        attachments.wait_condition(name, "True", reason="Attached", timeout=60)
    emulator.set_config({"throttle": None})
    # Someone detaches a compute behind the operator's back; the next resync re-attaches it.
    emulator._call("DELETE", f"/_admin/computes/{workspace.subscription}/"
                             f"{workspace.resource_group}/{workspace.name}/attached")
    wait_for(lambda: metric("batchcompute_drift_repairs_total") == 1, timeout=30,
             message="one drift repair")
    attachments.wait_condition("attached", "True", reason="Attached", timeout=30)

    # While they exist: the attachments gauge is what kubectl shows, every one verified.
    def gauges_match() -> None:
        _, samples = scrape(operator)
        got = by_labels(samples, "batchcompute_attachments", "state", "ready")
        assert got == census(attachments)
        assert total(samples, "batchcompute_attachments_unverified") == 0
    eventually(gauges_match, timeout=15)
    _, attached = scrape(operator)
    assert by_labels(attached, "batchcompute_attachments", "state", "ready")[
        ("Succeeded", "True")] == len(names) - 1
    assert total(attached, "batchcompute_workspace_loops") == 1
    assert total(attached, "leader_election_master_status", name=COMPONENT) == 1
    assert total(attached, "controller_runtime_max_concurrent_reconciles") == 4
    # The dashboard reads only what this scrape has, each with at least one series.
    missing = {name: sorted(exprs) for name, exprs in dashboard_metric_names().items()
               if not attached.get(name)}
    assert not missing, f"dashboard metrics without series in the scrape: {missing}"

    for name in names:
        attachments.delete(name)
    for name in names:
        attachments.wait_gone(name, timeout=60)

    # ARM: every request the emulator logged from this operator, and nothing else.
    def arm_counts_match() -> None:
        _, samples = scrape(operator)
        answered, unanswered = arm_log(emulator, since)
        assert by_labels(samples, "azure_successful_requests_total", "resource",
                         "requestType", "responseCode") == answered
        assert by_labels(samples, "azure_failed_requests_total", "resource",
                         "requestType") == unanswered
        timed: Counter[tuple[str, ...]] = Counter(unanswered)
        for (resource, method, _), n in answered.items():
            timed[(resource, method)] += n
        assert by_labels(samples, "azure_requests_time_seconds_count", "resource",
                         "requestType") == timed
    eventually(arm_counts_match, timeout=20)
    _, final = scrape(operator)
    answered, unanswered = arm_log(emulator, since)
    throttled = sum(n for key, n in answered.items() if key[2] == "429")
    assert throttled >= 1, answered
    assert unanswered == {("computes", "PUT"): 1}
    listed = sum(1 for e in emulator.requests(since) if e["target"] == "list"
                 and e["status"] == 200)
    assert total(final, "batchcompute_arm_list_pages_count") == listed
    assert total(final, "batchcompute_arm_list_pages_sum") == listed  # one page each
    assert total(final, "batchcompute_arm_pacing_wait_seconds_total", kind="writes") > 0

    # Reconciles: every step counted once, timed once; errors are the steps that failed.
    results = by_labels(final, "controller_runtime_reconcile_total", "controller", "result")
    assert set(results) == {(CONTROLLER, r) for r in ("success", "error", "requeue",
                                                      "requeue_after")}
    assert sum(results.values()) == total(final, "controller_runtime_reconcile_time_seconds_count")
    assert total(final, "controller_runtime_reconcile_errors_total") == \
        results[(CONTROLLER, "error")] >= 1  # the PUT that got no answer
    assert results[(CONTROLLER, "requeue_after")] >= 1  # the failed attach
    assert results[(CONTROLLER, "success")] >= len(names)

    # Nothing left: no operation in flight, no worker busy, no loop, no attachment. (A loop
    # retires at its next wake-up after its last member goes, a tenth of a second later.)
    def nothing_left() -> None:
        _, now = scrape(operator)
        assert {k: v for k, v in by_labels(now, "batchcompute_operations_in_flight",
                                           "kind").items() if v} == {}
        assert total(now, "controller_runtime_active_workers") == 0
        assert total(now, "batchcompute_workspace_loops") == 0
        assert not now.get("batchcompute_attachments")
    eventually(nothing_left, timeout=10)
    assert total(final, "batchcompute_drift_repairs_total") == 1
    drifted = [e for e in our_events(attachments) if e.reason == "Drifted"]
    assert len(drifted) == 1

    # Kubernetes: one POST per event the API server holds for these resources.
    def events_counted() -> None:
        _, samples = scrape(operator)
        posted = total(samples, "batchcompute_kubernetes_requests_total", verb="post",
                       code="201")
        assert posted == len(our_events(attachments)) > 0
    eventually(events_counted, timeout=15)

    # Bounded labels: no resource, workspace, subscription or uid in any series.
    forbidden = [attachments.namespace, workspace.name, workspace.resource_group,
                 workspace.subscription, workspace.account, workspace.batch_resource_group,
                 *names]
    for name, series in final.items():
        for labels, _ in series:
            for key, value in labels.items():
                assert key in LABEL_VALUES, (name, key)
                assert LABEL_VALUES[key].fullmatch(value), (name, key, value)
                assert not [f for f in forbidden if f in value], (name, key, value)
    print(f"ARM answers {dict(answered)}, no answer {dict(unanswered)}, 429s {throttled}; "
          f"reconciles {dict(results)}; pacing waited "
          f"{total(final, 'batchcompute_arm_pacing_wait_seconds_total', kind='writes'):.2f}s "
          "for writes")


# -- events ----------------------------------------------------------------------------------


def test_events_are_reported_by_the_operator_and_its_replica(
        start_operator: Any, attachments: Attachments, workspace: Workspace) -> None:
    start_operator(POD_ID=POD_ID)
    attachments.create("evented", workspace.spec())
    attachments.wait_condition("evented", "True", reason="Attached")
    attachments.delete("evented")
    attachments.wait_gone("evented")

    def all_four() -> list[Any]:
        events = [e for e in our_events(attachments) if e.involved_object.name == "evented"]
        return events if {"Attaching", "Attached", "Detaching", "Detached"} <= \
            {e.reason for e in events} else []
    events = wait_for(all_four, timeout=15, message="the four events of an attach and detach")
    for event in events:
        assert event.reporting_component == COMPONENT, event
        assert event.source.component == COMPONENT, event
        assert event.reporting_instance == POD_ID, event
        assert event.involved_object.kind == "BatchComputeAttachment"
    assert not [e for e in our_events(attachments) if "kopf" in
                f"{e.reporting_component} {e.source.component if e.source else ''}"]
    # What the README suggests to list them with (kubectl get events --field-selector ...).
    for selector in (f"reportingComponent={COMPONENT}", f"source={COMPONENT}"):
        selected = attachments.core.list_namespaced_event(attachments.namespace,
                                                          field_selector=selector).items
        assert {e.metadata.uid for e in selected} >= {e.metadata.uid for e in events}, selector


# -- logs ------------------------------------------------------------------------------------


def test_json_logs_at_the_default_level_name_the_resource_and_skip_probes(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any) -> None:
    operator = start_operator(verbose=False, BCO_LOG_FORMAT="json")
    uids: dict[str, str] = {}
    computes = {"logged": "logged-compute", "missing-account": "missing-account"}
    uids["logged"] = attachments.create("logged", workspace.spec(
        computeName="logged-compute"))["metadata"]["uid"]
    uids["missing-account"] = attachments.create("missing-account", workspace.spec(
        batchAccount={"resourceGroup": workspace.batch_resource_group,
                      "accountName": "nosuchaccount"}))["metadata"]["uid"]
    attachments.wait_condition("logged", "True", reason="Attached")
    attachments.wait_condition("missing-account", "False", reason="ResourceNotFound")
    probe(operator)
    for name in uids:
        attachments.delete(name)
    for name in uids:
        attachments.wait_gone(name, timeout=40)
    operator.stop()

    lines = json_lines(operator)
    ns = attachments.namespace
    assert {line["level"] for line in lines} <= {"INFO", "WARNING", "ERROR", "CRITICAL"}
    assert_no_probe_lines(lines)
    assert_lines_name_their_resource(lines, ns, uids)
    engine = [line for line in lines if "reason" in line]
    for line in engine:
        assert line["logger"].startswith("batchcompute_operator."), line
        assert line["workspace"] == workspace.name, line
        assert line["compute"] == computes[line["name"]], line
        assert line["level"] == ("WARNING" if line["reason"] == "AttachFailed" else "INFO"), line
    said = {(line["name"], line["reason"]) for line in engine}
    assert {("logged", r) for r in ("Attaching", "Attached", "Detaching", "Detached")} <= said
    assert ("missing-account", "AttachFailed") in said
    assert_no_secret(operator.log(), emulator.identity_header)
    attached = next(line for line in engine if line["reason"] == "Attached")
    print(f"{len(lines)} lines, {len(engine)} about events; for example:\n"
          f"{json.dumps(attached)}")


def test_no_secret_nor_probe_in_any_json_line_even_at_debug(
        start_operator: Any, attachments: Attachments, workspace: Workspace, emulator: Any,
        kube: Any, tmp_path: Path) -> None:
    """The operator's token (from a file here, so its value is known), the managed-identity
    header, a namespace identity's client secret and AZURE_CLIENT_SECRET never show up."""
    token = emulator.mint_token()
    token_file = tmp_path / "arm-token"
    token_file.write_text(token)
    client_secret = "s3cr3t-" + uuid.uuid4().hex
    env_secret = "Qx8~" + uuid.uuid4().hex
    ns = attachments.namespace
    CoreV1Api(kube).create_namespaced_secret(ns, {
        "metadata": {"name": "azure-identity"},
        "stringData": {"tenantId": "00000000-0000-0000-0000-0000000000aa",
                       "clientId": "00000000-0000-0000-0000-0000000000bb",
                       "clientSecret": client_secret}})
    rbac = RbacAuthorizationV1Api(kube)
    rbac.create_namespaced_role(ns, {
        "metadata": {"name": "batchcompute-operator-credentials"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"],
                   "resourceNames": ["azure-identity"], "verbs": ["get"]}]})
    rbac.create_namespaced_role_binding(ns, {
        "metadata": {"name": "batchcompute-operator-credentials"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "batchcompute-operator-credentials"},
        "subjects": [{"kind": "ServiceAccount", "name": "batchcompute-operator",
                      "namespace": "batchcompute-system"}]})
    operator = start_operator(BCO_LOG_FORMAT="json", BCO_CREDENTIAL="static-file",
                              BCO_STATIC_TOKEN_FILE=str(token_file),
                              AZURE_AUTHORITY_HOST=emulator.arm_url,
                              AZURE_CLIENT_SECRET=env_secret)
    uids = {
        "file-token": attachments.create("file-token", workspace.spec())["metadata"]["uid"],
        "own-identity": attachments.create("own-identity", workspace.spec(
            credentials={"secretRef": {"name": "azure-identity"}}))["metadata"]["uid"]}
    attachments.wait_condition("file-token", "True", reason="Attached")
    attachments.wait_condition("own-identity", "False", reason="AuthenticationFailed",
                               timeout=60)
    probe(operator)
    attachments.delete("file-token")
    attachments.wait_gone("file-token")
    operator.stop()
    # It never attached anything: given up by hand (README, "Deletion order"), so that the
    # namespace can go.
    attachments.custom.patch_namespaced_custom_object(
        "batchcompute.azureml.dev", "v1alpha1", ns, "batchcomputeattachments", "own-identity",
        {"metadata": {"finalizers": None}})
    attachments.delete("own-identity")

    lines = json_lines(operator)
    assert "DEBUG" in {line["level"] for line in lines}
    assert_no_probe_lines(lines)  # not even at DEBUG
    # kopf's per-object lines (at DEBUG it reports its processing of every object) carry it.
    assert [line for line in lines if line["logger"] == "kopf.objects"]
    assert_lines_name_their_resource(lines, ns, uids)
    assert_no_secret(operator.log(), token, token.rsplit(".", 1)[-1], emulator.identity_header,
                     client_secret, env_secret)
    print(f"{len(lines)} lines, none with a secret")
