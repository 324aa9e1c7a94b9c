"""Fixtures: an in-process emulator on a random loopback port and httpx clients for it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from batchcompute_testbed.emulator import EmulatorConfig, EmulatorServer

from .helpers import TOKEN, seed


@pytest.fixture
def config() -> EmulatorConfig:
    return EmulatorConfig(operation_seconds=0.2, static_tokens=(TOKEN,), seed=seed())


@pytest.fixture
async def server(config: EmulatorConfig) -> AsyncIterator[EmulatorServer]:
    async with EmulatorServer(config) as running:
        yield running


@pytest.fixture
async def client(server: EmulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=server.arm_url, headers=headers, timeout=5) as c:
        yield c


@pytest.fixture
async def admin(server: EmulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.admin_url, timeout=5) as c:
        yield c
