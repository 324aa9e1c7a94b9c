"""ARM error answers: api-version, authentication, validation, conflicts and failed attaches."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from batchcompute_testbed.emulator import EmulatorServer

from .helpers import (
    PARAMS,
    SUB,
    WS_LOCATION,
    attach,
    attach_body,
    batch_id,
    compute_path,
    wait_operation,
    ws_path,
)


async def test_api_version_is_required_and_checked(client: httpx.AsyncClient) -> None:
    missing = await client.get(ws_path())
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "MissingApiVersionParameter"

    unknown = await client.get(ws_path(), params={"api-version": "2019-01-01"})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "InvalidApiVersionParameter"
    assert "2020-02-02" in unknown.json()["error"]["message"]


async def test_batch_compute_type_only_on_old_api_versions(client: httpx.AsyncClient) -> None:
    refused = await client.put(
        compute_path("batch-new"), params={"api-version": "2021-07-01"}, json=attach_body()
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "InvalidComputeType"
    assert (await client.get(compute_path("batch-new"), params=PARAMS)).status_code == 404
    ok = await client.put(
        compute_path("batch-new"), params={"api-version": "2020-06-01"}, json=attach_body()
    )
    assert ok.status_code == 201


async def _arm_get(server: EmulatorServer, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.arm_url, headers=headers) as bare:
        return await bare.get(ws_path(), params=PARAMS)


async def test_authentication_failures(server: EmulatorServer, admin: httpx.AsyncClient) -> None:
    missing = await _arm_get(server, {})
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "AuthenticationFailed"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer ")

    malformed = await _arm_get(server, {"Authorization": "Basic dXNlcjpwdw=="})
    assert malformed.json()["error"]["code"] == "AuthenticationFailed"

    unknown = await _arm_get(server, {"Authorization": "Bearer not-a-token"})
    assert unknown.status_code == 401
    assert unknown.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert "WWW-Authenticate" in unknown.headers

    expired = (await admin.post("/tokens", json={"expires_in": -10})).json()
    answer = await _arm_get(server, {"Authorization": f"Bearer {expired['access_token']}"})
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "ExpiredAuthenticationToken"

    vault = (await admin.post("/tokens", json={"resource": "https://vault.azure.net"})).json()
    answer = await _arm_get(server, {"Authorization": f"Bearer {vault['access_token']}"})
    assert answer.json()["error"]["code"] == "InvalidAuthenticationTokenAudience"

    minted = (await admin.post("/tokens", json={"expires_in": 60, "principal": "ci"})).json()
    assert (
        await _arm_get(server, {"Authorization": f"Bearer {minted['access_token']}"})
    ).status_code == 200
    assert (await admin.delete("/tokens")).json() == {"revoked": 3}  # static tokens stay
    revoked = await _arm_get(server, {"Authorization": f"Bearer {minted['access_token']}"})
    assert revoked.json()["error"]["code"] == "InvalidAuthenticationToken"


@pytest.mark.parametrize(
    ("name", "content", "code"),
    [
        ("batch-x", b"{not json", "InvalidRequestContent"),
        (
            "batch-x",
            {"properties": {"computeType": "Batch", "resourceId": batch_id()}},
            "LocationRequired",
        ),
        ("batch-x", {"location": WS_LOCATION}, "InvalidRequestContent"),
        (
            "batch-x",
            {"location": WS_LOCATION, "properties": {"resourceId": batch_id()}},
            "InvalidRequestContent",
        ),
        (
            "batch-x",
            {"location": WS_LOCATION, "properties": {"computeType": "Batch"}},
            "ValidationError",
        ),
        (
            "batch-x",
            attach_body(
                "/subscriptions/x/resourceGroups/y/providers/Microsoft.Compute/virtualMachines/z"
            ),
            "LinkedInvalidPropertyId",
        ),
        ("batch-x", {**attach_body(), "location": "eastus"}, "InvalidLocation"),
        ("batch-x", attach_body(properties={"computeType": "AKS"}), "InvalidComputeType"),
        ("9starts-with-digit", attach_body(), "InvalidComputeName"),
        ("ab", attach_body(), "InvalidComputeName"),
    ],
)
async def test_invalid_put_bodies_are_refused(
    client: httpx.AsyncClient, name: str, content: Any, code: str
) -> None:
    if isinstance(content, bytes):
        response = await client.put(compute_path(name), params=PARAMS, content=content)
    else:
        response = await client.put(compute_path(name), params=PARAMS, json=content)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert (await client.get(compute_path(name), params=PARAMS)).status_code == 404


async def test_missing_batch_account_fails_the_operation(
    server: EmulatorServer, client: httpx.AsyncClient
) -> None:
    created = await client.put(
        compute_path("batch-ghost"),
        params=PARAMS,
        json=attach_body(batch_id("nosuchacct", rg="rg-elsewhere")),
    )
    assert created.status_code == 201
    status = await wait_operation(client, created.headers["Azure-AsyncOperation"])
    assert status["status"] == "Failed"
    assert status["error"]["code"] == "ResourceNotFound"
    assert status["error"]["message"].startswith(
        "The Resource 'Microsoft.Batch/batchAccounts/nosuchacct' under resource group "
        "'rg-elsewhere' was not found"
    )
    compute = (await client.get(compute_path("batch-ghost"), params=PARAMS)).json()
    assert compute["properties"]["provisioningState"] == "Failed"
    assert compute["properties"]["provisioningErrors"] == [{"error": status["error"]}]
    result = await client.get(created.headers["Location"])
    assert result.status_code == 400
    assert result.json()["error"]["code"] == "ResourceNotFound"


async def test_nested_error_style_for_old_clients(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await admin.post("/config", json={"operation_error_style": "nested"})
    status = await attach(client, "batch-nested", resource_id=batch_id("nosuchacct"))
    assert status["error"]["error"]["code"] == "ResourceNotFound"


async def test_conflicting_puts_change_nothing(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    planted = {"tags": {"k": "v"}, "properties": {"computeType": "AKS", "resourceId": "/aks/x"}}
    assert (
        await admin.put(f"/computes/{SUB}/rg-ml/ws-main/shared-name", json=planted)
    ).status_code == 200
    before = (await client.get(compute_path("shared-name"), params=PARAMS)).json()
    conflict = await client.put(compute_path("shared-name"), params=PARAMS, json=attach_body())
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "Conflict"
    assert "AKS" in conflict.json()["error"]["message"]
    assert (await client.get(compute_path("shared-name"), params=PARAMS)).json() == before

    await attach(client, "batch-taken")
    before = (await client.get(compute_path("batch-taken"), params=PARAMS)).json()
    other = await client.put(
        compute_path("batch-taken"), params=PARAMS, json=attach_body(batch_id("otheracct"))
    )
    assert other.status_code == 409
    assert batch_id() in other.json()["error"]["message"]
    assert (await client.get(compute_path("batch-taken"), params=PARAMS)).json() == before


async def test_put_and_delete_refused_while_an_operation_runs(client: httpx.AsyncClient) -> None:
    created = await client.put(compute_path("batch-busy"), params=PARAMS, json=attach_body())
    busy = await client.put(compute_path("batch-busy"), params=PARAMS, json=attach_body())
    assert busy.status_code == 409
    assert "in progress" in busy.json()["error"]["message"]
    detach = await client.delete(
        compute_path("batch-busy"), params={**PARAMS, "underlyingResourceAction": "Detach"}
    )
    assert detach.status_code == 409
    await wait_operation(client, created.headers["Azure-AsyncOperation"])
    assert (
        await client.put(compute_path("batch-busy"), params=PARAMS, json=attach_body())
    ).status_code == 200


async def test_delete_action_rules(client: httpx.AsyncClient) -> None:
    await attach(client, "batch-keep")
    for params, code in [
        (PARAMS, "InvalidUnderlyingResourceAction"),
        ({**PARAMS, "underlyingResourceAction": "Destroy"}, "InvalidUnderlyingResourceAction"),
        ({**PARAMS, "underlyingResourceAction": "Delete"}, "UnsupportedUnderlyingResourceAction"),
    ]:
        response = await client.delete(compute_path("batch-keep"), params=params)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == code
    refused = await client.delete(
        compute_path("batch-keep"), params={**PARAMS, "underlyingResourceAction": "Delete"}
    )
    assert "use detach" in refused.json()["error"]["message"]
    kept = await client.get(compute_path("batch-keep"), params=PARAMS)
    assert kept.json()["properties"]["provisioningState"] == "Succeeded"

    nothing = await client.delete(
        compute_path("never-was"), params={**PARAMS, "underlyingResourceAction": "Detach"}
    )
    assert nothing.status_code == 204


async def test_unknown_operation_and_route(client: httpx.AsyncClient) -> None:
    op = (
        f"/subscriptions/{SUB}/providers/Microsoft.MachineLearningServices/locations/"
        f"{WS_LOCATION}/computeOperationsStatus/00000000-0000-0000-0000-000000000000"
    )
    missing = await client.get(op, params=PARAMS)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "ResourceNotFound"
    stray = await client.get(f"/subscriptions/{SUB}/resourceGroups", params=PARAMS)
    assert stray.status_code == 404
    wrong_method = await client.post(compute_path("batch-any"), params=PARAMS, json={})
    assert wrong_method.status_code == 405
