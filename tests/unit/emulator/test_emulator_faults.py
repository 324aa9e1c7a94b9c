"""Injected faults: canned answers, dropped connections, stalls, forced operation results."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from .helpers import (
    PARAMS,
    attach,
    attach_body,
    compute_path,
    wait_for,
    wait_operation,
    ws_path,
)

DETACH = {**PARAMS, "underlyingResourceAction": "Detach"}


async def _fault(admin: httpx.AsyncClient, **spec: Any) -> dict[str, Any]:
    response = await admin.post("/faults", json=spec)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_status_fault_answers_the_next_matching_requests(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    body = {"error": {"code": "ServiceUnavailable", "message": "try later"}}
    await _fault(
        admin,
        method="GET",
        kind="workspace",
        count=2,
        action={"status": 503, "retry_after": 2, "body": body},
    )
    # A compute read is not a workspace read: the fault waits for its own kind.
    assert (await client.get(compute_path("batch-none"), params=PARAMS)).status_code == 404
    for remaining in (1, 0):
        response = await client.get(ws_path(), params=PARAMS)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "2"
        assert response.json() == body
        assert [f["remaining"] for f in (await admin.get("/faults")).json()] == (
            [remaining] if remaining else []
        )
    assert (await client.get(ws_path(), params=PARAMS)).status_code == 200
    log = (await admin.get("/requests")).json()
    assert [e["fault"] for e in log] == [None, "status", "status", None]
    assert [e["status"] for e in log] == [404, 503, 503, 200]


async def test_raw_body_and_path_regex(client: httpx.AsyncClient, admin: httpx.AsyncClient) -> None:
    await _fault(admin, path_regex=r"/computes/batch-raw$", action={"status": 502, "raw": "<html>"})
    await attach(client, "batch-other")
    response = await client.get(compute_path("batch-raw"), params=PARAMS)
    assert response.status_code == 502
    assert response.text == "<html>"
    assert response.headers["content-type"].startswith("text/plain")


async def test_faults_come_before_authentication(
    admin: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    await _fault(admin, action={"status": 500})
    async with httpx.AsyncClient(base_url=str(client.base_url)) as anonymous:
        response = await anonymous.get(ws_path(), params=PARAMS)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "InjectedFault"


async def test_close_drops_the_connection(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await _fault(admin, method="PUT", action={"close": True})
    with pytest.raises(httpx.RemoteProtocolError):
        await client.put(compute_path("batch-cut"), params=PARAMS, json=attach_body())
    # The dropped PUT never reached the service: nothing was created.
    assert (await client.get(compute_path("batch-cut"), params=PARAMS)).status_code == 404
    log = (await admin.get("/requests")).json()
    assert (log[0]["fault"], log[0]["status"]) == ("close", None)
    assert (await admin.get("/stats")).json()["byStatus"]["closed"] == 1


async def test_stall_delays_then_answers_or_times_out(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await _fault(admin, kind="read", action={"stall_seconds": 0.3})
    started = time.monotonic()
    response = await client.get(ws_path(), params=PARAMS)
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3

    await _fault(admin, kind="read", action={"stall_seconds": 5, "close": True})
    with pytest.raises(httpx.ReadTimeout):
        await client.get(ws_path(), params=PARAMS, timeout=0.2)

    # The client gave up, so the emulator abandons the request long before the 5 s stall ends.
    async def abandoned() -> bool:
        log = (await admin.get("/requests")).json()
        return len(log) == 2 and log[1]["fault"] == "stall" and log[1]["durationMs"] > 0

    await wait_for(abandoned, within=2.0)
    assert (await admin.get("/requests")).json()[1]["status"] is None


async def test_forced_failure_of_the_next_attach(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await _fault(
        admin,
        method="PUT",
        path_regex="batch-doomed",
        action={"operation_result": "Failed", "code": "InternalServerError", "message": "boom"},
    )
    # A refused PUT starts no operation and so does not use the fault up.
    bad = await client.put(compute_path("batch-doomed"), params=PARAMS, json={"location": "x"})
    assert bad.status_code == 400
    status = await attach(client, "batch-doomed")
    assert status["status"] == "Failed"
    assert status["error"] == {"code": "InternalServerError", "message": "boom"}
    compute = (await client.get(compute_path("batch-doomed"), params=PARAMS)).json()
    assert compute["properties"]["provisioningState"] == "Failed"
    assert compute["properties"]["provisioningErrors"] == [{"error": status["error"]}]
    # Only the next one: retrying succeeds.
    assert (await attach(client, "batch-doomed"))["status"] == "Succeeded"


async def test_canceled_detach_leaves_the_compute_attached(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await attach(client, "batch-stays")
    await _fault(admin, kind="delete", action={"operation_result": "Canceled"})
    deleted = await client.delete(compute_path("batch-stays"), params=DETACH)
    assert deleted.status_code == 202
    status = await wait_operation(client, deleted.headers["Azure-AsyncOperation"])
    assert status["status"] == "Canceled"
    assert status["error"]["code"] == "OperationCanceled"
    compute = (await client.get(compute_path("batch-stays"), params=PARAMS)).json()
    assert compute["properties"]["provisioningState"] == "Succeeded"
    result = await client.get(deleted.headers["Location"])
    assert result.status_code == 409


async def test_fault_admin_validates_and_clears(admin: httpx.AsyncClient) -> None:
    for bad in [
        {"action": {}},
        {"action": {"status": 99}},
        {"action": {"status": 500, "close": True}},
        {"kind": "everything", "action": {"close": True}},
        {"path_regex": "(", "action": {"close": True}},
        {"count": 0, "action": {"close": True}},
        {"action": {"operation_result": "Exploded"}},
    ]:
        assert (await admin.post("/faults", json=bad)).status_code == 400, bad
    await _fault(admin, count=None, action={"status": 500})
    listed = (await admin.get("/faults")).json()
    assert listed[0]["remaining"] is None
    assert (await admin.delete("/faults")).status_code == 204
    assert (await admin.get("/faults")).json() == []
