"""What SDK v1 (azureml-core) needs from the emulator, one behaviour at a time: api-versions it
sends, `//` paths, subscriptions, the discovery document and the regional API host, the
`properties.properties` bag, JWT tokens; and ARM's limit of 50 tags."""

from __future__ import annotations

import time

import httpx

from batchcompute_testbed.emulator import EmulatorServer
from batchcompute_testbed.emulator.__main__ import config_from_args, parse_args
from batchcompute_testbed.emulator.auth import principal_ids
from batchcompute_testbed.emulator.config import DEFAULT_API_VERSIONS, DEFAULT_TENANT_ID

from .helpers import (
    OTHER_SUB,
    PARAMS,
    RG,
    SUB,
    TOKEN,
    WS,
    attach,
    attach_body,
    compute_path,
    jwt_claims,
    regional_path,
    ws_path,
)

SUBSCRIPTIONS = {"api-version": "2022-12-01"}


async def test_workspace_reads_with_the_sdk_v1_api_version(client: httpx.AsyncClient) -> None:
    response = await client.get(ws_path(), params={"api-version": "2022-05-01"})
    assert response.status_code == 200
    assert response.json()["name"] == WS
    # Still no Batch compute on an api-version from 2021 on.
    refused = await client.put(
        compute_path("batch-new"), params={"api-version": "2022-05-01"}, json=attach_body()
    )
    assert refused.json()["error"]["code"] == "InvalidComputeType"


def test_api_version_option_adds_to_the_defaults() -> None:
    args = parse_args(["--ready-file", "ready.json", "--api-version", "2024-10-01"])
    versions = config_from_args(args).api_versions
    assert versions == DEFAULT_API_VERSIONS | {"2024-10-01"}
    assert config_from_args(parse_args(["--ready-file", "r"])).api_versions == DEFAULT_API_VERSIONS


async def test_admin_api_versions_add_to_the_accepted_list(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    config = (await admin.post("/config", json={"api_versions": ["2024-10-01"]})).json()
    assert set(config["api_versions"]) == DEFAULT_API_VERSIONS | {"2024-10-01"}
    for version in ("2024-10-01", "2020-02-02"):
        response = await client.get(ws_path(), params={"api-version": version})
        assert response.status_code == 200, version
    assert (await admin.post("/config", json={"api_versions": [""]})).status_code == 400


async def test_duplicate_leading_slashes_are_one(
    server: EmulatorServer, client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    # SDK v1 joins "https://host/" and "/subscriptions/...".
    workspace = await client.get(f"{server.arm_url}/{ws_path()}", params=PARAMS)
    assert workspace.status_code == 200
    assert workspace.json()["name"] == WS
    created = await client.put(
        f"{server.arm_url}//{compute_path('batch-slash')}", params=PARAMS, json=attach_body()
    )
    assert created.status_code == 201
    assert created.json()["id"] == compute_path("batch-slash")
    assert (await client.get(compute_path("batch-slash"), params=PARAMS)).status_code == 200
    stray = await client.get(f"{server.arm_url}//{ws_path()}/nothing", params=PARAMS)
    assert stray.json()["error"]["code"] == "InvalidResourceType"
    # The log keeps the path as it was sent.
    paths = [e["path"] for e in (await admin.get("/requests")).json()]
    assert paths[0] == "/" + ws_path()
    assert paths[1] == "//" + compute_path("batch-slash")


async def test_subscriptions_are_listed_as_arm_does(
    server: EmulatorServer, client: httpx.AsyncClient
) -> None:
    listed = await client.get("/subscriptions", params=SUBSCRIPTIONS)
    assert listed.status_code == 200
    body = listed.json()
    assert body["count"] == {"type": "Total", "value": 2}
    assert sorted(s["subscriptionId"] for s in body["value"]) == sorted([SUB, OTHER_SUB])
    first = next(s for s in body["value"] if s["subscriptionId"] == SUB)
    assert first["id"] == f"/subscriptions/{SUB}"
    assert first["tenantId"] == DEFAULT_TENANT_ID
    assert first["state"] == "Enabled"
    assert first["displayName"]

    one = await client.get(f"/subscriptions/{SUB.upper()}", params=SUBSCRIPTIONS)
    assert one.json() == first
    missing = await client.get(
        "/subscriptions/00000000-0000-0000-0000-000000000000", params=SUBSCRIPTIONS
    )
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "SubscriptionNotFound"

    # Microsoft.Resources has its own api-versions, and ARM still wants a token.
    wrong = await client.get("/subscriptions", params=PARAMS)
    assert wrong.json()["error"]["code"] == "InvalidApiVersionParameter"
    assert "2022-12-01" in wrong.json()["error"]["message"]
    async with httpx.AsyncClient(base_url=server.arm_url) as anonymous:
        assert (await anonymous.get("/subscriptions", params=SUBSCRIPTIONS)).status_code == 401


async def test_discovery_document_points_at_the_emulator(
    server: EmulatorServer, client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    workspace = (await client.get(ws_path(), params={"api-version": "2022-05-01"})).json()
    discovery_url = workspace["properties"]["discoveryUrl"]
    assert discovery_url == f"{server.arm_url}/discovery"
    async with httpx.AsyncClient() as anonymous:  # SDK v1 sends no token here
        document = (await anonymous.get(discovery_url)).json()
    for key in ("api", "experimentation", "history", "hyperdrive", "modelmanagement", "studio"):
        assert document[key] == server.arm_url
    entry = (await admin.get("/requests")).json()[-1]
    assert (entry["target"], entry["kind"], entry["status"]) == ("discovery", "read", 200)

    await admin.post("/faults", json={"kind": "discovery", "action": {"status": 503}})
    async with httpx.AsyncClient() as anonymous:
        assert (await anonymous.get(discovery_url)).status_code == 503
        assert (await anonymous.get(discovery_url)).status_code == 200


async def test_regional_api_host_serves_the_same_computes(
    server: EmulatorServer, client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await attach(client, "batch-reg", tags={"team": "a"})
    via_arm = (await client.get(compute_path("batch-reg"), params=PARAMS)).json()
    got = await client.get(regional_path(compute_path("batch-reg")), params=PARAMS)
    assert got.status_code == 200
    assert got.json() == via_arm
    assert not any(h.startswith("x-ms-ratelimit") for h in got.headers)

    listed = (await client.get(regional_path(f"{ws_path()}/computes"), params=PARAMS)).json()
    assert [c["name"] for c in listed["value"]] == ["batch-reg"]
    missing = await client.get(regional_path(compute_path("batch-none")), params=PARAMS)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "ResourceNotFound"

    # Writes go through ARM; tokens are checked all the same.
    put = await client.put(regional_path(compute_path("batch-x")), params=PARAMS, json={})
    assert put.status_code == 405
    async with httpx.AsyncClient(base_url=server.arm_url) as anonymous:
        refused = await anonymous.get(regional_path(compute_path("batch-reg")), params=PARAMS)
    assert refused.status_code == 401
    stray = await client.get(regional_path(f"{ws_path()}/jobs"), params=PARAMS)
    assert stray.status_code == 404

    # ARM's throttling does not meter the regional host.
    await admin.post("/config", json={"throttle": {"reads": {"bucket": 1, "refill": 0}}})
    for _ in range(3):
        assert (
            await client.get(regional_path(compute_path("batch-reg")), params=PARAMS)
        ).status_code == 200
    assert (await client.get(ws_path(), params=PARAMS)).status_code == 200
    assert (await client.get(ws_path(), params=PARAMS)).status_code == 429
    log = (await admin.get("/requests")).json()
    regional = {e["target"] for e in log if e["path"].startswith("/rp/")}
    assert regional == {"compute", "list", "unknown"}


async def test_computes_carry_the_type_specific_properties_bag(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await attach(client, "batch-bag")
    planted = {"properties": {"computeType": "AKS", "properties": {"agentCount": 3}}}
    await admin.put(f"/computes/{SUB}/{RG}/{WS}/aks-bag", json=planted)
    listed = (await client.get(f"{ws_path()}/computes", params=PARAMS)).json()["value"]
    bags = {c["name"]: c["properties"]["properties"] for c in listed}
    assert bags == {"aks-bag": {"agentCount": 3}, "batch-bag": None}


async def test_minted_tokens_are_jwts_with_the_usual_claims(
    server: EmulatorServer, admin: httpx.AsyncClient
) -> None:
    before = int(time.time())
    minted = (await admin.post("/tokens", json={"expires_in": 600, "principal": "sdk-user"})).json()
    claims = jwt_claims(minted["access_token"])
    assert claims["exp"] == minted["expires_on"]
    assert before <= claims["iat"] == claims["nbf"] <= claims["exp"] - 590
    assert claims["aud"] == "https://management.azure.com"
    assert claims["tid"] == DEFAULT_TENANT_ID
    assert claims["iss"] == f"https://sts.windows.net/{DEFAULT_TENANT_ID}/"
    assert (claims["oid"], claims["appid"]) == principal_ids("sdk-user")
    again = (await admin.post("/tokens", json={"principal": "sdk-user"})).json()["access_token"]
    assert again != minted["access_token"]
    assert jwt_claims(again)["oid"] == claims["oid"]

    expired = (await admin.post("/tokens", json={"expires_in": -10})).json()
    old = jwt_claims(expired["access_token"])
    assert old["exp"] < time.time()
    assert old["iat"] < old["exp"]

    headers = {"X-IDENTITY-HEADER": server.identity_header}
    params = {"api-version": "2019-08-01", "resource": "https://management.core.windows.net/"}
    async with httpx.AsyncClient() as http:
        answer = (await http.get(server.identity_endpoint, params=params, headers=headers)).json()
    identity = jwt_claims(answer["access_token"])
    assert identity["exp"] == int(answer["expires_on"])
    assert identity["aud"] == "https://management.core.windows.net/"
    assert identity["oid"] == principal_ids("managed-identity")[0]


async def test_static_tokens_stay_as_given(client: httpx.AsyncClient) -> None:
    assert (await client.get(ws_path(), params=PARAMS)).status_code == 200
    assert client.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_more_than_50_tags_are_refused_as_arm_does(client: httpx.AsyncClient) -> None:
    fifty = {f"k{i}": "v" for i in range(50)}
    ok = await client.put(compute_path("batch-50"), params=PARAMS, json=attach_body(tags=fifty))
    assert ok.status_code == 201
    many = {**fifty, "one-more": "v"}
    refused = await client.put(compute_path("batch-51"), params=PARAMS, json=attach_body(tags=many))
    assert refused.status_code == 400
    assert refused.json()["error"] == {
        "code": "InvalidTags",
        "message": "Too many tags specified. Requested tag count - '51'. "
        "Maximum number of tags allowed - '50'.",
    }
    assert (await client.get(compute_path("batch-51"), params=PARAMS)).status_code == 404
