"""HTTPS with a generated CA: clients that trust ca.pem connect; others are refused."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from batchcompute_testbed.emulator import EmulatorConfig, EmulatorServer

from .helpers import PARAMS, TOKEN, seed, ws_path

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_https_with_the_generated_ca(tmp_path: Path) -> None:
    config = EmulatorConfig(tls_dir=tmp_path / "tls", static_tokens=(TOKEN,), seed=seed())
    async with EmulatorServer(config) as server:
        assert server.arm_url.startswith("https://127.0.0.1:")
        assert server.ca_file == tmp_path / "tls" / "ca.pem"
        trusted = ssl.create_default_context(cafile=str(server.ca_file))
        async with httpx.AsyncClient(verify=trusted, headers=AUTH) as client:
            response = await client.get(server.arm_url + ws_path(), params=PARAMS)
            assert response.status_code == 200
            by_name = server.arm_url.replace("127.0.0.1", "localhost")
            assert (await client.get(by_name + ws_path(), params=PARAMS)).status_code == 200
            # Links the emulator hands out keep the scheme and host the client used.
            put = await client.put(
                by_name + ws_path() + "/computes/batch-tls",
                params=PARAMS,
                json={
                    "location": "westeurope",
                    "properties": {
                        "computeType": "Batch",
                        "resourceId": "/subscriptions/s/resourceGroups/r/"
                        "providers/Microsoft.Batch/batchAccounts/a",
                    },
                },
            )
            assert put.headers["Azure-AsyncOperation"].startswith(by_name + "/subscriptions/")
        async with httpx.AsyncClient() as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get(server.arm_url + ws_path(), params=PARAMS)

    cert = x509.load_pem_x509_certificate((tmp_path / "tls" / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    assert (tmp_path / "tls" / "server-key.pem").stat().st_mode & 0o077 == 0


async def test_the_ca_is_reused_across_restarts(tmp_path: Path) -> None:
    config = EmulatorConfig(tls_dir=tmp_path, static_tokens=(TOKEN,), seed=seed())
    async with EmulatorServer(config):
        first = (tmp_path / "ca.pem").read_bytes()
    async with EmulatorServer(config) as server:
        assert (tmp_path / "ca.pem").read_bytes() == first
        trusted = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        async with httpx.AsyncClient(verify=trusted, headers=AUTH) as client:
            assert (await client.get(server.arm_url + ws_path(), params=PARAMS)).status_code == 200
