"""The attach -> poll -> read -> list -> detach cycle, checked against ARM's shapes."""

from __future__ import annotations

import re

import httpx

from batchcompute_testbed.emulator import EmulatorServer

from .helpers import (
    ACCOUNT,
    API,
    BATCH_LOCATION,
    PARAMS,
    RG,
    SUB,
    WS,
    WS_LOCATION,
    attach_body,
    batch_id,
    compute_path,
    wait_for,
    wait_operation,
    ws_path,
)

COMPUTE_TYPE = "Microsoft.MachineLearningServices/workspaces/computes"


def _operation_url(server: EmulatorServer, kind: str) -> re.Pattern[str]:
    return re.compile(
        re.escape(
            f"{server.arm_url}/subscriptions/{SUB}/providers/"
            f"Microsoft.MachineLearningServices/locations/{WS_LOCATION}/{kind}/"
        )
        + r"[0-9a-f-]{36}"
        + re.escape(f"?api-version={API}")
        + "$"
    )


async def test_full_attach_and_detach_cycle(
    server: EmulatorServer, client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    name = "batch-one"
    body = attach_body(tags={"owner": "team-a"}, properties={"description": "first"})
    created = await client.put(compute_path(name), params=PARAMS, json=body)

    assert created.status_code == 201
    assert _operation_url(server, "computeOperationsStatus").match(
        created.headers["Azure-AsyncOperation"]
    )
    assert _operation_url(server, "computeOperationsResults").match(created.headers["Location"])
    assert created.headers["Retry-After"] == "1"
    assert int(created.headers["x-ms-ratelimit-remaining-subscription-writes"]) == 199
    compute = created.json()
    assert compute["id"] == compute_path(name)
    assert compute["type"] == COMPUTE_TYPE
    assert compute["properties"]["provisioningState"] == "Creating"

    # The compute is visible at once, and the Location poll says "still running".
    early = await client.get(compute_path(name), params=PARAMS)
    assert early.json()["properties"]["provisioningState"] == "Creating"
    running = await client.get(created.headers["Location"])
    assert running.status_code == 202
    assert running.headers["Location"] == created.headers["Location"]
    assert running.headers["Retry-After"] == "1"

    status = await wait_operation(client, created.headers["Azure-AsyncOperation"])
    assert status["status"] == "Succeeded"
    assert status["name"] in status["id"]
    assert status["startTime"] <= status["endTime"]
    assert "error" not in status

    got = await client.get(compute_path(name), params=PARAMS)
    assert got.status_code == 200
    assert "x-ms-ratelimit-remaining-subscription-reads" in got.headers
    compute = got.json()
    assert compute == {
        "id": compute_path(name),
        "name": name,
        "type": COMPUTE_TYPE,
        "location": WS_LOCATION,
        "tags": {"owner": "team-a"},
        "properties": {
            "computeType": "Batch",
            "computeLocation": BATCH_LOCATION,
            "provisioningState": "Succeeded",
            "provisioningErrors": None,
            "description": "first",
            "createdOn": compute["properties"]["createdOn"],
            "modifiedOn": compute["properties"]["modifiedOn"],
            "resourceId": batch_id(),
            "isAttachedCompute": True,
            "properties": None,  # the type-specific bag: Batch has none
        },
    }
    result = await client.get(created.headers["Location"])
    assert result.status_code == 200
    assert result.json()["id"] == compute_path(name)

    listed = await client.get(f"{ws_path()}/computes", params=PARAMS)
    assert listed.status_code == 200
    assert [c["name"] for c in listed.json()["value"]] == [name]
    assert "nextLink" not in listed.json()

    # Same type and account: an update, answered 200 with a new operation.
    updated = await client.put(
        compute_path(name),
        params=PARAMS,
        json=attach_body(tags={"owner": "team-b"}, properties={"description": "second"}),
    )
    assert updated.status_code == 200
    assert updated.json()["properties"]["provisioningState"] == "Updating"
    assert updated.headers["Azure-AsyncOperation"] != created.headers["Azure-AsyncOperation"]
    await wait_operation(client, updated.headers["Azure-AsyncOperation"])
    again = (await client.get(compute_path(name), params=PARAMS)).json()
    assert again["tags"] == {"owner": "team-b"}
    assert again["properties"]["description"] == "second"
    assert again["properties"]["createdOn"] == compute["properties"]["createdOn"]

    deleted = await client.delete(
        compute_path(name), params={**PARAMS, "underlyingResourceAction": "Detach"}
    )
    assert deleted.status_code == 202
    assert _operation_url(server, "computeOperationsStatus").match(
        deleted.headers["Azure-AsyncOperation"]
    )
    assert int(deleted.headers["x-ms-ratelimit-remaining-subscription-deletes"]) == 199
    deleting = await client.get(compute_path(name), params=PARAMS)
    assert deleting.json()["properties"]["provisioningState"] == "Deleting"
    detach = await wait_operation(client, deleted.headers["Azure-AsyncOperation"])
    assert detach["status"] == "Succeeded"
    gone = await client.get(compute_path(name), params=PARAMS)
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "ResourceNotFound"
    assert (await client.get(deleted.headers["Location"])).status_code == 204

    # Detaching never deletes the Batch account.
    accounts = (await admin.get("/resources")).json()["batchAccounts"]
    assert [a["name"] for a in accounts] == [ACCOUNT]


async def test_paths_and_resource_ids_are_case_insensitive(client: httpx.AsyncClient) -> None:
    shouted = (
        f"/SUBSCRIPTIONS/{SUB.upper()}/resourcegroups/{RG.upper()}/PROVIDERS/"
        f"microsoft.machinelearningservices/WORKSPACES/{WS.upper()}"
    )
    ws = await client.get(shouted, params=PARAMS)
    assert ws.status_code == 200
    assert ws.json()["id"] == ws_path()  # answers use the stored spelling

    done = await client.put(
        f"{shouted}/COMPUTES/Batch-Mixed", params=PARAMS, json=attach_body(batch_id().upper())
    )
    assert done.status_code == 201
    await wait_operation(client, done.headers["Azure-AsyncOperation"])
    # Same account spelt differently is the same attachment: an update, not a conflict.
    again = await client.put(compute_path("batch-mixed"), params=PARAMS, json=attach_body())
    assert again.status_code == 200
    assert again.json()["name"] == "Batch-Mixed"


async def test_workspace_shape_and_not_found_variants(client: httpx.AsyncClient) -> None:
    ws = await client.get(ws_path(), params=PARAMS)
    assert ws.status_code == 200
    body = ws.json()
    assert body["id"] == ws_path()
    assert body["name"] == WS
    assert body["type"] == "Microsoft.MachineLearningServices/workspaces"
    assert body["location"] == WS_LOCATION
    assert body["properties"]["provisioningState"] == "Succeeded"

    cases = [
        (ws_path(sub="11111111-2222-3333-4444-555555555555"), "SubscriptionNotFound"),
        (ws_path(rg="rg-missing"), "ResourceGroupNotFound"),
        (ws_path(ws="ws-missing"), "ResourceNotFound"),
        (f"{ws_path(ws='ws-missing')}/computes/any-name", "ResourceNotFound"),
        (compute_path("not-there"), "ResourceNotFound"),
    ]
    for path, code in cases:
        response = await client.get(path, params=PARAMS)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == code
        assert response.json()["error"]["message"]


async def test_operations_complete_without_being_polled(
    server: EmulatorServer, client: httpx.AsyncClient
) -> None:
    created = await client.put(compute_path("batch-quiet"), params=PARAMS, json=attach_body())
    assert created.status_code == 201

    async def settled() -> bool:
        compute = server.emulator.store.computes[(SUB, RG, WS, "batch-quiet")]
        return bool(compute.properties["provisioningState"] == "Succeeded")

    await wait_for(settled)
