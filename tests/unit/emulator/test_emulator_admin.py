"""The admin API: seeding, planting and removing computes, settings, the request log."""

from __future__ import annotations

import time

import httpx

from .helpers import (
    ACCOUNT,
    PARAMS,
    RG,
    SUB,
    TOKEN,
    WS,
    attach,
    attach_body,
    compute_path,
    wait_for,
    ws_path,
)


async def test_seed_is_additive_and_validated(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    extra = {
        "workspaces": [
            {
                "subscriptionId": SUB,
                "resourceGroup": "rg-new",
                "name": "ws-new",
                "location": "East US",
            }
        ]
    }
    assert (await admin.post("/seed", json=extra)).json() == {"workspaces": 1, "batchAccounts": 0}
    assert (await client.get(ws_path(rg="RG-NEW", ws="ws-new"), params=PARAMS)).status_code == 200
    assert (await client.get(ws_path(), params=PARAMS)).status_code == 200  # still there
    resources = (await admin.get("/resources")).json()
    assert len(resources["workspaces"]) == 3
    assert (await admin.post("/seed", json={"workspaces": [{"name": "x"}]})).status_code == 400
    assert (await admin.post("/seed", content=b"nope")).status_code == 400


async def test_plant_list_and_remove_computes_out_of_band(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    planted = await admin.put(
        f"/computes/{SUB}/{RG}/{WS}/aks-one",
        json={"tags": {"team": "x"}, "properties": {"computeType": "AKS", "resourceId": "/aks/1"}},
    )
    assert planted.status_code == 200
    got = (await client.get(compute_path("aks-one"), params=PARAMS)).json()
    assert got["tags"] == {"team": "x"}
    assert got["properties"]["computeType"] == "AKS"
    assert got["properties"]["provisioningState"] == "Succeeded"
    assert got["location"] == "westeurope"

    listed = (await admin.get("/computes")).json()
    assert [(c["workspace"], c["compute"]["name"], c["busy"]) for c in listed] == [
        (WS, "aks-one", False)
    ]
    missing_ws = await admin.put(
        f"/computes/{SUB}/{RG}/nope/x-1", json={"properties": {"computeType": "AKS"}}
    )
    assert missing_ws.status_code == 404

    # Removed while an attach is running: the operation ends and nothing comes back.
    started = await client.put(compute_path("batch-gone"), params=PARAMS, json=attach_body())
    assert (await admin.delete(f"/computes/{SUB}/{RG}/{WS}/BATCH-GONE")).json() == {"deleted": True}
    assert (await client.get(compute_path("batch-gone"), params=PARAMS)).status_code == 404

    async def finished() -> bool:
        status = (await client.get(started.headers["Azure-AsyncOperation"])).json()
        return bool(status["status"] != "InProgress")

    await wait_for(finished)
    assert (await client.get(compute_path("batch-gone"), params=PARAMS)).status_code == 404
    assert any(op["status"] == "Succeeded" for op in (await admin.get("/operations")).json())


async def test_removed_batch_account_makes_attach_fail(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    assert (await admin.delete(f"/batchAccounts/{SUB}/{RG}/{ACCOUNT}")).json() == {"deleted": True}
    assert (await attach(client, "batch-late"))["status"] == "Failed"


async def test_config_round_trip_and_validation(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    config = (await admin.get("/config")).json()
    assert config["operation_seconds"] == 0.2
    assert config["throttle"]["reads"] == {"bucket": 250, "refill": 25}
    assert config["throttle"]["writes"] == {"bucket": 200, "refill": 10}
    assert config["throttle"]["deletes"] == {"bucket": 200, "refill": 10}
    for bad in [
        {"page_size": 0},
        {"latency_ms": "slow"},
        {"unknown": 1},
        {"throttle": {"reads": {"bucket": 0, "refill": 1}}},
    ]:
        assert (await admin.post("/config", json=bad)).status_code == 400, bad
    updated = await admin.post("/config", json={"latency_ms": 150, "retry_after_seconds": 7})
    assert updated.json()["latency_ms"] == 150
    started = time.monotonic()
    put = await client.put(compute_path("batch-slow"), params=PARAMS, json=attach_body())
    assert time.monotonic() - started >= 0.15
    assert put.headers["Retry-After"] == "7"


async def test_request_log_and_stats(client: httpx.AsyncClient, admin: httpx.AsyncClient) -> None:
    await client.put(compute_path("batch-log"), params=PARAMS, json=attach_body(tags={"a": "b"}))
    await client.get(ws_path())  # no api-version: 400
    await admin.get("/faults")  # admin calls are not recorded
    log = (await admin.get("/requests")).json()
    assert [(e["seq"], e["method"], e["status"], e["kind"], e["target"]) for e in log] == [
        (1, "PUT", 201, "write", "compute"),
        (2, "GET", 400, "read", "workspace"),
    ]
    first = log[0]
    assert first["body"]["tags"] == {"a": "b"}
    assert first["query"] == PARAMS
    assert first["subscription"] == SUB
    assert (first["auth"], first["principal"], first["throttled"], first["fault"]) == (
        "valid",
        "static",
        False,
        None,
    )
    assert TOKEN not in (await admin.get("/requests")).text

    since = (await admin.get("/requests", params={"since": 1})).json()
    assert [e["seq"] for e in since] == [2]
    stats = (await admin.get("/stats")).json()
    assert stats["total"] == 2
    assert stats["byMethod"] == {"PUT": 1, "GET": 1}
    assert stats["byKind"] == {"write": 1, "read": 1}
    assert stats["byStatus"] == {"201": 1, "400": 1}

    assert (await admin.delete("/requests")).status_code == 204
    assert (await admin.get("/requests")).json() == []
    await client.get(ws_path(), params=PARAMS)
    assert [e["seq"] for e in (await admin.get("/requests")).json()] == [3]  # seq keeps rising


async def test_reset_and_unknown_admin_routes(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await attach(client, "batch-reset")
    await admin.post("/faults", json={"action": {"status": 500}})
    assert (await admin.post("/reset")).status_code == 204
    assert (await admin.get("/computes")).json() == []
    assert (await admin.get("/faults")).json() == []
    assert (await admin.get("/requests")).json() == []
    assert (await client.get(ws_path(), params=PARAMS)).status_code == 200  # seed kept
    unknown = await admin.get("/nothing-here")
    assert unknown.status_code == 404
    assert len((await admin.get("/requests")).json()) == 1
