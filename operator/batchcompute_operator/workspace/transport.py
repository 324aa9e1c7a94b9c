"""httpx's transport interface served by aiohttp's connection pool.

The ARM client is an httpx client (its URL handling, its requests and responses, the token
guard built on them). What moves the bytes is a detail of the transport: httpcore's pool
spends about three times the CPU per request that aiohttp's does (which kopf already loads
for the API server), and an operator that attaches thousands of computes makes thousands of
requests. Errors come back as httpx's own exceptions, so callers see no difference.
"""

from __future__ import annotations

import ssl

import aiohttp
import httpx

from batchcompute_operator.config import Settings


def arm_http(settings: Settings) -> httpx.AsyncClient:
    """The process's one HTTP client for ARM, with the guards every use of it needs."""
    verify: ssl.SSLContext | bool = True
    if settings.ca_bundle:
        verify = ssl.create_default_context(cafile=settings.ca_bundle)
    return httpx.AsyncClient(
        transport=AiohttpTransport(verify=verify, limit=settings.max_connections,
                                   timeout=settings.http_timeout),
        timeout=httpx.Timeout(settings.http_timeout),
        follow_redirects=False,  # a redirect could carry the token to another host
        trust_env=False,  # no proxy or netrc surprises: only the configured ARM host
    )


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, *, verify: ssl.SSLContext | bool, limit: int, timeout: float) -> None:
        self._connector_args = {"ssl": verify if verify is not True else True, "limit": limit}
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 10.0))
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Created on first use, inside the running event loop.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(**self._connector_args),  # type: ignore[arg-type]
                timeout=self._timeout, trust_env=False, auto_decompress=True)
            # aiohttp sends a GET, PUT or DELETE once more by itself when the connection drops
            # before the answer; a lost answer may hide a PUT that happened, so the ARM client
            # decides (it re-observes before any write), and a request with no answer is
            # counted as one (azure_failed_requests_total). The attribute is aiohttp's own
            # switch (its test client turns it off the same way); there is no parameter.
            self._session._retry_connection = False
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw
                   if k.lower() not in (b"host", b"content-length", b"accept-encoding")]
        body = request.content
        try:
            async with self._client().request(
                    request.method, str(request.url), headers=headers,
                    data=body if body else None, allow_redirects=False) as resp:
                content = await resp.read()
                return httpx.Response(
                    resp.status,
                    headers=[(k.decode("latin-1"), v.decode("latin-1"))
                             for k, v in resp.raw_headers
                             if k.lower() not in (b"content-encoding", b"transfer-encoding")],
                    content=content, request=request)
        except TimeoutError as exc:
            raise httpx.ReadTimeout(f"no answer in time: {exc}", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.TransportError(f"{type(exc).__name__}: {exc}", request=request) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
