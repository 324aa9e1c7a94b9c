"""Listing computes in pages linked by absolute nextLink URLs."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx

from batchcompute_testbed.emulator import EmulatorServer

from .helpers import API, PARAMS, RG, SUB, WS, attach_body, compute_path, ws_path


async def _plant(admin: httpx.AsyncClient, count: int) -> list[str]:
    names = [f"batch-{i:03d}" for i in range(count)]
    for name in reversed(names):  # insertion order must not matter
        body = {"properties": {"computeType": "Batch", "resourceId": f"/x/{name}"}}
        assert (await admin.put(f"/computes/{SUB}/{RG}/{WS}/{name}", json=body)).status_code == 200
    return names


async def test_250_computes_come_in_three_linked_pages(
    server: EmulatorServer, client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    names = await _plant(admin, 250)
    seen: list[str] = []
    sizes: list[int] = []
    url: str | None = f"{server.arm_url}{ws_path()}/computes?api-version={API}"
    while url:
        page = await client.get(url)
        assert page.status_code == 200
        body = page.json()
        seen += [c["name"] for c in body["value"]]
        sizes.append(len(body["value"]))
        url = body.get("nextLink")
        if url:
            parts = urlsplit(url)
            assert f"{parts.scheme}://{parts.netloc}" == server.arm_url
            query = parse_qs(parts.query)
            assert query["api-version"] == [API]
            assert query["$skipToken"]
    assert sizes == [100, 100, 50]
    assert seen == names


async def test_page_size_is_configurable_and_paging_survives_inserts(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await _plant(admin, 5)
    assert (await admin.post("/config", json={"page_size": 2})).json()["page_size"] == 2
    first = (await client.get(f"{ws_path()}/computes", params=PARAMS)).json()
    assert [c["name"] for c in first["value"]] == ["batch-000", "batch-001"]
    # A compute sorting before the cursor appears meanwhile: no page repeats an item.
    created = await client.put(compute_path("batch-0000"), params=PARAMS, json=attach_body())
    assert created.status_code == 201
    second = (await client.get(first["nextLink"])).json()
    assert [c["name"] for c in second["value"]] == ["batch-002", "batch-003"]
    third = (await client.get(second["nextLink"])).json()
    assert [c["name"] for c in third["value"]] == ["batch-004"]
    assert "nextLink" not in third


async def test_bad_skip_token_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{ws_path()}/computes", params={**PARAMS, "$skipToken": "%%%"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "InvalidSkipToken"
