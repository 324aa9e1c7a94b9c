"""The Kubernetes API going away mid-attach: broken watches, 410 Gone on resume, no lost step.

kopf writes status with merge patches that carry no resourceVersion, so a status patch never
meets a 409 conflict; what the operator must survive is the API server itself restarting.
"""

from __future__ import annotations

from typing import Any

from operator_proc import Attachments, Workspace
from waiting import wait_for


def test_api_server_restart_mid_attach_loses_no_transition(
        start_operator: Any, attachments: Attachments, workspace: Workspace,
        emulator: Any, controlplane: Any) -> None:
    plane = controlplane.require_local()
    emulator.set_config({"operation_seconds": 4})
    try:
        seq = (emulator.requests() or [{"seq": 0}])[-1]["seq"]
        operator = start_operator()
        attachments.create("steady", workspace.spec())
        attachments.wait_condition("steady", "True")
        attachments.create("inflight", workspace.spec())
        wait_for(lambda: "inflight" in workspace.computes(emulator), message="PUT sent")
        downtime = plane.restart_apiserver()
        # The attach finishes while the operator reconnects; its result must still land.
        attachments.wait_condition("inflight", "True", timeout=60)
        # And the watch works again for resources created after the restart.
        attachments.create("after", workspace.spec())
        attachments.wait_condition("after", "True", timeout=60)
    finally:
        emulator.set_config({"operation_seconds": 1})
    puts = [c for c in Workspace.calls(emulator, seq) if c["method"] == "PUT"]
    assert sorted(c["path"].rsplit("/", 1)[1] for c in puts) == ["after", "inflight", "steady"]
    assert attachments.condition("steady")["status"] == "True"
    log = operator.log()
    assert "Traceback" not in log
    # The fault really happened: the watch broke and kopf resumed it (via 410 or a new list).
    assert "Restarting the watch-stream" in log
    print(f"API server down for {downtime:.1f}s")
