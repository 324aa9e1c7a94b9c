"""When the API server connections are all busy, a new object's first status goes first,
and status writes and events then take turns.

The client runs against a real HTTP server on loopback that holds the first request until
the test lets it go, so the others queue for the pool's only connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from batchcompute_operator.kube.client import (
    EVENT,
    FIRST_STATUS,
    STATUS,
    Connection,
    KubeClient,
    PriorityGate,
)

PATH = "/apis/batchcompute.azureml.dev/v1alpha1/namespaces/team-a/batchcomputeattachments"


class Server:
    def __init__(self) -> None:
        self.arrived: list[str] = []  # "<METHOD> <name>" in the order requests reached it
        self.release = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        name = (await request.json())["reason"] if request.method == "POST" else \
            request.path.split("/")[-2]
        self.arrived.append(f"{request.method} {name}")
        if len(self.arrived) == 1:
            await self.release.wait()
        return web.json_response({"metadata": {"name": name}})


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", srv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    srv.url = f"http://127.0.0.1:{port}"
    yield srv
    await runner.cleanup()


async def until(condition: Callable[[], bool], deadline: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.01)


async def test_first_status_goes_first_then_statuses_and_events_take_turns(
        server: Server) -> None:
    async def connect() -> Connection:
        return Connection(server=server.url, ssl=False)

    client = KubeClient(connect, connections=1)
    try:
        busy = asyncio.create_task(client.patch_status(f"{PATH}/busy", "u0", {}))
        await until(lambda: len(server.arrived) == 1)
        # Queued in this order while the only connection is taken: three results, then
        # three events, then a new object's first status.
        queued = []
        for name in ("r1", "r2", "r3"):
            queued.append(asyncio.create_task(client.patch_status(f"{PATH}/{name}", name, {})))
            await asyncio.sleep(0.02)
        for reason in ("e1", "e2", "e3"):
            queued.append(asyncio.create_task(client.post_event("team-a", {"reason": reason})))
            await asyncio.sleep(0.02)
        queued.append(asyncio.create_task(client.patch_status(f"{PATH}/new", "u2", {},
                                                              priority=FIRST_STATUS)))
        await asyncio.sleep(0.05)
        assert server.arrived == ["PATCH busy"]
        server.release.set()
        await asyncio.wait_for(asyncio.gather(busy, *queued), timeout=5)
        # The first status goes first. The events queued behind the results do not wait for
        # all of them: the two classes alternate, each in the order it was queued.
        assert server.arrived == ["PATCH busy", "PATCH new", "PATCH r1", "POST e1", "PATCH r2",
                                  "POST e2", "PATCH r3", "POST e3"]
    finally:
        await client.close()


async def test_a_cancelled_waiter_does_not_lose_its_place_in_the_pool() -> None:
    gate = PriorityGate(1)
    await gate.acquire(STATUS)
    cancelled = asyncio.create_task(gate.acquire(FIRST_STATUS))
    waiting = asyncio.create_task(gate.acquire(EVENT))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    gate.release()  # skips the cancelled waiter and hands the place on
    await asyncio.wait_for(waiting, timeout=1)
    gate.release()
    await asyncio.wait_for(gate.acquire(FIRST_STATUS), timeout=1)  # the one place is free again
