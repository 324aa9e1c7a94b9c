"""Shared names and polling helpers for the emulator tests."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

SUB = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
OTHER_SUB = "7d0c3c8e-5b7a-4a57-9a8e-2f2b1f0c6a11"
RG = "rg-ml"
WS = "ws-main"
WS_LOCATION = "westeurope"
BATCH_LOCATION = "northeurope"
ACCOUNT = "batchacct1"
API = "2020-02-02"
TOKEN = "static-test-token"
PARAMS = {"api-version": API}


def seed() -> dict[str, Any]:
    return {
        "workspaces": [
            {"subscriptionId": SUB, "resourceGroup": RG, "name": WS, "location": WS_LOCATION},
            {
                "subscriptionId": OTHER_SUB,
                "resourceGroup": "rg-other",
                "name": "ws-other",
                "location": "eastus",
            },
        ],
        "batchAccounts": [
            {
                "subscriptionId": SUB,
                "resourceGroup": RG,
                "name": ACCOUNT,
                "location": BATCH_LOCATION,
            },
        ],
    }


def ws_path(sub: str = SUB, rg: str = RG, ws: str = WS) -> str:
    return (
        f"/subscriptions/{sub}/resourceGroups/{rg}/providers/"
        f"Microsoft.MachineLearningServices/workspaces/{ws}"
    )


def compute_path(name: str) -> str:
    return f"{ws_path()}/computes/{name}"


def batch_id(account: str = ACCOUNT, rg: str = RG, sub: str = SUB) -> str:
    return (
        f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Batch/"
        f"batchAccounts/{account}"
    )


def attach_body(resource_id: str | None = None, **extra: Any) -> dict[str, Any]:
    props: dict[str, Any] = {"computeType": "Batch", "resourceId": resource_id or batch_id()}
    props.update(extra.pop("properties", {}))
    return {"location": WS_LOCATION, "properties": props, **extra}


def regional_path(path: str) -> str:
    """The same resource on the workspace's regional API host, as SDK v1 reads it."""
    return f"/rp/workspaces{path}"


def jwt_claims(token: str) -> dict[str, Any]:
    """A JWT's claims without checking its signature, as SDK v1 reads them."""
    header, payload, signature = token.split(".")
    assert header and signature
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


async def wait_for(
    probe: Callable[[], Awaitable[T | None]], within: float = 5.0, interval: float = 0.02
) -> T:
    """Poll `probe` until it returns something truthy; fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = await probe()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(interval)


async def wait_operation(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """Poll an Azure-AsyncOperation URL until the operation is terminal."""

    async def terminal() -> dict[str, Any] | None:
        response = await client.get(url)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return None if body["status"] == "InProgress" else body

    return await wait_for(terminal)


async def attach(client: httpx.AsyncClient, name: str, **kwargs: Any) -> dict[str, Any]:
    """Attach and wait; returns the terminal operation status."""
    response = await client.put(compute_path(name), params=PARAMS, json=attach_body(**kwargs))
    assert response.status_code in (200, 201), response.text
    return await wait_operation(client, response.headers["Azure-AsyncOperation"])
