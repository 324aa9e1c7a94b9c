"""The operator's own requests to the Kubernetes API: status patches, events, Secret reads.

kopf keeps watching, finalizers and peering; everything the engine writes goes through this
one client, so its timeouts, retries and concurrency are ours to bound. Status patches are JSON
merge patches of the status subresource without a resourceVersion (they never fail with 409),
carrying `metadata.uid` so a patch never lands on a re-created namespace/name.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from batchcompute_operator import metrics

log = logging.getLogger(__name__)

RETRYABLE = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to authenticate, as kopf's login resolved it."""

    server: str
    ssl: ssl.SSLContext | bool
    headers: Mapping[str, str] = field(default_factory=dict)


Connector = Callable[[], Awaitable[Connection]]


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
        self._timeout = timeout
        self._limits = httpx.Limits(max_connections=connections,
                                    max_keepalive_connections=connections)
        self._attempts = attempts
        self._max_backoff = max_backoff
        self._http: httpx.AsyncClient | None = None
        self._connected_at = 0.0
        self._lock = asyncio.Lock()
        self.stats = KubeStats()
        self.last_success = 0.0  # monotonic time of the last answered request

    async def _client(self, *, renew: bool = False) -> httpx.AsyncClient:
        async with self._lock:
            if self._http is not None and renew and time.monotonic() - self._connected_at > 5:
                await self._http.aclose()
                self._http = None
            if self._http is None:
                conn = await self._connect()
                self._http = httpx.AsyncClient(
                    base_url=conn.server, verify=conn.ssl, headers=dict(conn.headers),
                    timeout=httpx.Timeout(self._timeout, connect=min(5.0, self._timeout)),
                    limits=self._limits, trust_env=False, follow_redirects=False)
                self._connected_at = time.monotonic()
            return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: Mapping[str, str] | None = None,
                      headers: Mapping[str, str] | None = None,
                      ok: frozenset[int] = frozenset()) -> httpx.Response:
        """One request, retried on throttling, server errors and lost connections.

        `ok` names error statuses the caller handles itself (returned, not raised).
        """
        verb = method.lower()
        renew = False
        for attempt in range(1, self._attempts + 1):
            client = await self._client(renew=renew)
            renew = False
            self.stats.requests += 1
            try:
                resp = await client.request(method, path, json=json, params=params,
                                            headers=headers)
            except httpx.HTTPError as exc:
                metrics.kube_requests.labels(verb, "none").inc()
                if attempt == self._attempts:
                    self.stats.failures += 1
                    raise KubeError(0, f"{method} {path}: {type(exc).__name__}") from None
                await self._pause(attempt, None)
                continue
            metrics.kube_requests.labels(verb, str(resp.status_code)).inc()
            if resp.status_code < 400 or resp.status_code in ok:
                self.last_success = time.monotonic()
                return resp
            if resp.status_code == 401 and attempt == 1:
                renew = True  # a rotated ServiceAccount token: log in again, once
                continue
            if resp.status_code in RETRYABLE and attempt < self._attempts:
                await self._pause(attempt, resp.headers.get("Retry-After"))
                continue
            self.stats.failures += 1
            raise KubeError(resp.status_code, _reason(resp))
        raise AssertionError("unreachable")

    async def _pause(self, attempt: int, retry_after: str | None) -> None:
        self.stats.retries += 1
        delay = min(self._max_backoff, 0.25 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
        if retry_after and retry_after.isdigit():
            delay = max(delay, min(float(retry_after), 30.0))
        await asyncio.sleep(delay)

    # -- what the engine does ------------------------------------------------------------------

    async def patch_status(self, path: str, uid: str, status: Mapping[str, Any]
                           ) -> dict[str, Any] | None:
        """Merge-patch `status` of the object at `path`; None when it is gone or replaced."""
        resp = await self.request(
            "PATCH", f"{path}/status", json={"metadata": {"uid": uid}, "status": dict(status)},
            headers={"Content-Type": "application/merge-patch+json"},
            ok=frozenset({404, 409, 422}))
        if resp.status_code in (409, 422):
            if "uid" in resp.text.lower() or resp.status_code == 409:
                return None  # another object now has that name
            raise KubeError(resp.status_code, _reason(resp))
        if resp.status_code == 404:
            return None
        body: dict[str, Any] = resp.json()
        return body

    async def post_event(self, namespace: str, event: Mapping[str, Any]) -> None:
        await self.request("POST", f"/api/v1/namespaces/{namespace}/events", json=dict(event))

    async def get_json(self, path: str, *, missing_ok: bool = False) -> dict[str, Any] | None:
        resp = await self.request("GET", path, ok=frozenset({404}) if missing_ok else frozenset())
        if resp.status_code == 404:
            return None
        body: dict[str, Any] = resp.json()
        return body


def _reason(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.reason_phrase or "no details"
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])[:300]
    return resp.reason_phrase or "no details"
