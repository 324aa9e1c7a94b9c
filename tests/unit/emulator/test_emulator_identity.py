"""The managed-identity endpoint, driven by azure-identity's own ManagedIdentityCredential."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity.aio import ManagedIdentityCredential

from batchcompute_testbed.emulator import EmulatorConfig, EmulatorServer

from .helpers import PARAMS, seed, ws_path

ARM_SCOPE = "https://management.azure.com/.default"


@pytest.fixture
async def credential(
    server: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ManagedIdentityCredential]:
    for name in (
        "IDENTITY_SERVER_THUMBPRINT",
        "IMDS_ENDPOINT",
        "MSI_ENDPOINT",
        "MSI_SECRET",
        "AZURE_CLIENT_ID",
        "AZURE_FEDERATED_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    # App Service managed identity: chosen when both of these are set.
    monkeypatch.setenv("IDENTITY_ENDPOINT", server.identity_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", server.identity_header)
    async with ManagedIdentityCredential(retry_total=0) as cred:
        yield cred


async def _arm_status(server: EmulatorServer, token: str) -> httpx.Response:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as client:
        return await client.get(server.arm_url + ws_path(), params=PARAMS)


async def test_azure_identity_gets_a_token_that_arm_accepts(
    server: EmulatorServer, credential: ManagedIdentityCredential, admin: httpx.AsyncClient
) -> None:
    token = await credential.get_token(ARM_SCOPE)
    assert token.expires_on > 3000
    response = await _arm_status(server, token.token)
    assert response.status_code == 200

    log = (await admin.get("/requests")).json()
    assert log[0]["kind"] == "identity"
    assert log[0]["query"] == {
        "api-version": "2019-08-01",
        "resource": "https://management.azure.com",
    }
    assert log[1]["principal"] == "managed-identity"
    assert token.token not in (await admin.get("/requests")).text  # never recorded
    assert server.identity_header not in (await admin.get("/requests")).text


async def test_identity_endpoint_failure_and_revocation(
    server: EmulatorServer, credential: ManagedIdentityCredential, admin: httpx.AsyncClient
) -> None:
    token = await credential.get_token(ARM_SCOPE)
    state = (await admin.post("/identity", json={"revoke": True})).json()
    assert state["issued"] == 0
    revoked = await _arm_status(server, token.token)
    assert revoked.json()["error"]["code"] == "InvalidAuthenticationToken"

    await admin.post("/identity", json={"fail": True, "status": 400, "count": 1})
    with pytest.raises(ClientAuthenticationError):
        await credential.get_token("https://vault.azure.net/.default")
    # The failure was for one request only.
    fresh = await credential.get_token("https://storage.azure.com/.default")
    wrong_audience = await _arm_status(server, fresh.token)
    assert wrong_audience.json()["error"]["code"] == "InvalidAuthenticationTokenAudience"


async def test_identity_header_and_api_version_are_checked(server: EmulatorServer) -> None:
    params = {"api-version": "2019-08-01", "resource": "https://management.azure.com"}
    async with httpx.AsyncClient() as client:
        missing = await client.get(server.identity_endpoint, params=params)
        assert missing.status_code == 401
        wrong = await client.get(
            server.identity_endpoint, params=params, headers={"X-IDENTITY-HEADER": "guess"}
        )
        assert wrong.status_code == 401
        header = {"X-IDENTITY-HEADER": server.identity_header}
        old = await client.get(
            server.identity_endpoint, headers=header, params={**params, "api-version": "2017-09-01"}
        )
        assert old.status_code == 400
        ok = await client.get(server.identity_endpoint, headers=header, params=params)
        body = ok.json()
        assert ok.status_code == 200
        assert body["token_type"] == "Bearer"
        assert body["resource"] == "https://management.azure.com"
        assert isinstance(body["expires_on"], str)
        assert body["expires_on"].isdigit()


async def test_identity_endpoint_over_https(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = EmulatorConfig(tls_dir=tmp_path, seed=seed())
    async with EmulatorServer(config) as server:
        monkeypatch.setenv("IDENTITY_ENDPOINT", server.identity_endpoint)
        monkeypatch.setenv("IDENTITY_HEADER", server.identity_header)
        monkeypatch.delenv("IDENTITY_SERVER_THUMBPRINT", raising=False)
        assert server.ca_file is not None
        async with ManagedIdentityCredential(
            connection_verify=str(server.ca_file), retry_total=0
        ) as cred:
            token = await cred.get_token(ARM_SCOPE)
        trusted = ssl.create_default_context(cafile=str(server.ca_file))
        async with httpx.AsyncClient(
            verify=trusted, headers={"Authorization": f"Bearer {token.token}"}
        ) as client:
            response = await client.get(server.arm_url + ws_path(), params=PARAMS)
        assert response.status_code == 200
