"""What SDK v1 (azureml-core) needs from the emulator, one behaviour at a time: api-versions it
sends, `//` paths, subscriptions, the discovery document and the regional API host, the
`properties.properties` bag, JWT tokens; and ARM's limit of 50 tags."""

from __future__ import annotations

import httpx

from batchcompute_testbed.emulator.__main__ import config_from_args, parse_args
from batchcompute_testbed.emulator.config import DEFAULT_API_VERSIONS

from .helpers import (
    WS,
    attach_body,
    compute_path,
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
