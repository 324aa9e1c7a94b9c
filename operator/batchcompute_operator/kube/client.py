"""The operator's own requests to the Kubernetes API: status patches, events, Secret reads.

kopf keeps watching, finalizers and peering; everything the engine writes goes through this
one client, so its timeouts, retries and concurrency are ours to bound. It runs on aiohttp,
the HTTP stack kopf itself uses for the API server (ARM has its own httpx client): per
request it costs a fraction of what a general-purpose client does, and an attach costs four
of them. When every connection is busy, a new generation's first status goes ahead of the
other requests; events and the rest then take turns, each in its own order. Status patches
are JSON merge patches of the status subresource without a resourceVersion (they never fail
with 409), carrying `metadata.uid` so a patch never lands on a re-created namespace/name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from batchcompute_operator import metrics

log = logging.getLogger(__name__)

RETRYABLE = frozenset({429, 500, 502, 503, 504})

# Request classes. Under a burst of creations the pool is the queue. A new object's first
# status goes ahead of everything: without that it waited behind the results and events of
# earlier objects for seconds, with no status at all. Status writes and events then take
# turns, each class in its own order: every attach makes two of each. In one shared queue,
# a few event posters stood against up to four status writers per workspace loop; under a
# burst over a hundred workspaces, events piled up by the thousand and were still
# being posted long after the last attachment was Ready.
FIRST_STATUS, STATUS, EVENT = 0, 1, 2  # STATUS: also every other request but events


class PriorityGate:
    """At most `size` holders. When all places are taken, the next one released goes to a
    first status if one waits, else to the STATUS and EVENT classes in turn."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiting: tuple[deque[asyncio.Future[None]], ...] = (deque(), deque(), deque())
        self._turn = STATUS  # of STATUS and EVENT, the class served next when both wait

    async def acquire(self, kind: int) -> None:
        if self._free > 0 and not any(self._waiting):
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[kind].append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a place while being cancelled: pass it on
            raise  # a cancelled waiter still queued is skipped by release()

    def release(self) -> None:
        while (kind := self._next()) is not None:
            waiter = self._waiting[kind].popleft()
            if not waiter.done():
                if kind != FIRST_STATUS:
                    self._turn = EVENT if kind == STATUS else STATUS
                waiter.set_result(None)
                return
        self._free += 1

    def _next(self) -> int | None:
        other = EVENT if self._turn == STATUS else STATUS
        for kind in (FIRST_STATUS, self._turn, other):
            if self._waiting[kind]:
                return kind
        return None


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to authenticate, as kopf's login resolved it."""

    server: str
    ssl: ssl.SSLContext | bool
    headers: Mapping[str, str] = field(default_factory=dict)


Connector = Callable[[], Awaitable[Connection]]


@dataclass(frozen=True)
class KubeResponse:
    status: int
    text: str

    def json(self) -> Any:
        return json.loads(self.text) if self.text else None


class KubeError(Exception):
    """A request failed for good (after retries); `status` is 0 when there was no answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status


@dataclass
class KubeStats:
    requests: int = 0
    retries: int = 0
    failures: int = 0


class KubeClient:
    def __init__(self, connect: Connector, *, timeout: float = 15.0, connections: int = 16,
                 attempts: int = 6, max_backoff: float = 8.0) -> None:
        self._connect = connect
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(5.0, timeout))
        self._connections = connections
        self._attempts = attempts
        self._max_backoff = max_backoff
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self._connected_at = 0.0
        self._lock = asyncio.Lock()
        self._gate = PriorityGate(connections)
        self.stats = KubeStats()
        self.last_success = 0.0  # monotonic time of the last answered request

    async def _client(self, *, renew: bool = False) -> tuple[aiohttp.ClientSession, str]:
        async with self._lock:
            if self._session is not None and renew and time.monotonic() - self._connected_at > 5:
                await self._session.close()
                self._session = None
            if self._session is None:
                conn = await self._connect()
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=self._connections, ssl=conn.ssl),
                    headers=dict(conn.headers), timeout=self._timeout, trust_env=False)
                self._server = conn.server.rstrip("/")
                self._connected_at = time.monotonic()
            return self._session, self._server

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, *, body: Any = None,
                      params: Mapping[str, str] | None = None,
                      content_type: str = "application/json",
                      ok: frozenset[int] = frozenset(),
                      priority: int = STATUS) -> KubeResponse:
        """One request, retried on throttling, server errors and lost connections.

        `ok` names error statuses the caller handles itself (returned, not raised). A
        connection is held only while the request is on the wire, not while backing off.
        """
        verb = method.lower()
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if data is not None else None
        renew = False
        for attempt in range(1, self._attempts + 1):
            session, server = await self._client(renew=renew)
            renew = False
            self.stats.requests += 1
            try:
                status, text, retry_after = await self._exchange(
                    session, method, server + path, data, params, headers, priority)
            except (aiohttp.ClientError, TimeoutError) as exc:
                metrics.kube_requests.labels(verb, "none").inc()
                if attempt == self._attempts:
                    self.stats.failures += 1
                    raise KubeError(0, f"{method} {path}: {type(exc).__name__}") from None
                await self._pause(attempt, None)
                continue
            metrics.kube_requests.labels(verb, str(status)).inc()
            if status < 400 or status in ok:
                self.last_success = time.monotonic()
                return KubeResponse(status, text)
            if status == 401 and attempt == 1:
                renew = True  # a rotated ServiceAccount token: log in again, once
                continue
            if status in RETRYABLE and attempt < self._attempts:
                await self._pause(attempt, retry_after)
                continue
            self.stats.failures += 1
            raise KubeError(status, _reason(text))
        raise AssertionError("unreachable")

    async def _exchange(self, session: aiohttp.ClientSession, method: str, url: str,
                        data: str | None, params: Mapping[str, str] | None,
                        headers: dict[str, str] | None, priority: int
                        ) -> tuple[int, str, str | None]:
        """One request and its answer, holding a place in the pool only meanwhile."""
        await self._gate.acquire(priority)
        try:
            async with session.request(method, url, data=data, params=params, headers=headers,
                                       allow_redirects=False) as resp:
                return resp.status, await resp.text(), resp.headers.get("Retry-After")
        finally:
            self._gate.release()

    async def _pause(self, attempt: int, retry_after: str | None) -> None:
        self.stats.retries += 1
        # Never longer than max_backoff, jitter included: a request the API server could not
        # answer is tried again at most that long after it can (unless it asked for longer).
        delay = min(self._max_backoff, 0.25 * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
        if retry_after and retry_after.isdigit():
            delay = max(delay, min(float(retry_after), 30.0))
        await asyncio.sleep(delay)

    # -- what the engine does ------------------------------------------------------------------

    async def patch_status(self, path: str, uid: str, status: Mapping[str, Any], *,
                           priority: int = STATUS) -> dict[str, Any] | None:
        """Merge-patch `status` of the object at `path`; None when it is gone or replaced."""
        resp = await self.request(
            "PATCH", f"{path}/status", body={"metadata": {"uid": uid}, "status": dict(status)},
            content_type="application/merge-patch+json", ok=frozenset({404, 409, 422}),
            priority=priority)
        if resp.status in (409, 422):
            if "uid" in resp.text.lower() or resp.status == 409:
                return None  # another object now has that name
            raise KubeError(resp.status, _reason(resp.text))
        if resp.status == 404:
            return None
        body: dict[str, Any] = resp.json()
        return body

    async def post_event(self, namespace: str, event: Mapping[str, Any]) -> bool:
        """Create a named event; False when it exists already (an earlier attempt of this
        very POST was stored, and its answer lost)."""
        resp = await self.request("POST", f"/api/v1/namespaces/{namespace}/events",
                                  body=dict(event), ok=frozenset({409}), priority=EVENT)
        return resp.status != 409

    async def get_json(self, path: str, *, missing_ok: bool = False) -> dict[str, Any] | None:
        resp = await self.request("GET", path, ok=frozenset({404}) if missing_ok else frozenset())
        if resp.status == 404:
            return None
        body: dict[str, Any] = resp.json()
        return body


def _reason(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return text[:200] or "no details"
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])[:300]
    return "no details"
