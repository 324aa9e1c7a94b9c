"""`make bench` in miniature: N=50 through every scenario, asserting call counts, not times.

Timings belong to the benchmark (`make bench`); what must hold at any scale is what each
attachment costs ARM and Kubernetes, and that idling, drift repair and a restart cost
exactly what they should.
"""

from __future__ import annotations

import argparse

import pytest
from bench.scenario import FULL, POLL_INTERVAL_S, run

N = 50
RESYNC = 4.0
WORKSPACES = 10


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    args = argparse.Namespace(n=N, resync=RESYNC, timeout=240.0, operator_env=[], keep=None)
    return run(args, tmp_path_factory.mktemp("bench"), N, FULL)


def test_attach_costs_one_write_and_one_list_per_workspace_per_poll(
        figures: dict[str, float]) -> None:
    assert figures["arm_writes_per_attach"] == 1.0
    assert figures["arm_429_fraction"] <= 0.01
    # Reads are paid per workspace, not per attachment: the workspace once, then one LIST
    # per poll interval while anything in it is in flight (plus the first look, and one
    # resync in the moments counted after the last Ready). Per attachment that is below 1
    # only with more attachments per workspace than polls, which `make bench` shows at scale.
    assert figures["arm_workspace_reads_attach"] <= WORKSPACES
    polls = figures["seconds"] / POLL_INTERVAL_S
    assert figures["arm_lists_max_per_workspace"] <= polls + 2


def test_attach_costs_at_most_five_kubernetes_writes(figures: dict[str, float]) -> None:
    # the finalizer, the acknowledgement of the generation, the status attached, two events
    assert figures["k8s_writes_per_attach"] <= 5.0
    assert figures["events_per_attach"] == 2.0


def test_idling_costs_one_list_per_workspace_and_no_writes(figures: dict[str, float]) -> None:
    assert figures["steady_arm_writes"] == 0
    assert figures["steady_k8s_writes"] == 0
    assert figures["steady_status_changed"] == 0
    assert figures["steady_not_ready"] == 0
    # 10 workspaces, 5 attachments each: one LIST page per workspace per interval (+1 for
    # a window that straddles an interval boundary)
    assert figures["steady_arm_reads_per_interval"] <= 10 * 4 / 3


def test_drift_is_repaired_with_exactly_one_put_each_within_one_interval(
        figures: dict[str, float]) -> None:
    assert figures["drift_puts"] == figures["drifted"] == N
    # The loop acts on the LIST that shows the drift: within one resync interval plus the
    # repair itself (a PUT, its 2 s operation, the next poll).
    assert figures["drift_repair_seconds"] <= RESYNC + 5


def test_restart_re_verifies_without_writing(figures: dict[str, float]) -> None:
    assert figures["restart_arm_writes"] == 0
    assert figures["restart_k8s_writes"] == 0


def test_detach_costs_one_delete_and_leaves_nothing(figures: dict[str, float]) -> None:
    assert figures["arm_deletes_per_detach"] == 1.0
    assert figures["computes_left"] == 0
    assert figures["detach_arm_429_fraction"] <= 0.01



def test_kopf_floor_run_shows_kopf_the_operators_watch_events(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """`make bench --kopf-floor` in miniature: kopf alone adds its finalizer to every resource,
    takes both statuses as the operator words them (the API server validates them against the
    CRD), and its CPU per attach is measured."""
    from bench.floor import kopf_floor
    from bench.scenario import SMALL

    args = argparse.Namespace(resync=RESYNC, timeout=240.0, keep=None)
    docs = [SMALL.attachment(j) for j in range(20)]
    floor = kopf_floor(args, tmp_path_factory.mktemp("floor"), docs)
    assert floor["kopf_floor_cpu_seconds_per_attach"] > 0
    assert 0 < floor["kopf_floor_create_cpu_seconds_per_attach"] \
        <= floor["kopf_floor_cpu_seconds_per_attach"]
