"""Azure credentials via azure-identity, with one token cache per process.

The default chain covers workload identity, managed identity and an environment service
principal. `static-file` reads a token from a mounted file on every refresh, for local
development against the emulator. Credential errors are reduced to their message: no
secret, assertion or token ever reaches a log line, event or status.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Protocol

from azure.core.exceptions import ClientAuthenticationError

from batchcompute_operator.config import Settings
from batchcompute_operator.workspace.errors import AuthenticationFailed

REFRESH_MARGIN = 300.0  # seconds before expiry at which a cached token is renewed


class AsyncCredential(Protocol):
    async def get_token(self, *scopes: str, **kwargs: Any) -> Any: ...
    async def close(self) -> None: ...


class StaticFileCredential:
    """A bearer token from a file; the file is re-read so it can be rotated in place."""

    def __init__(self, path: str, lifetime: float = 600.0) -> None:
        self._path = Path(path)
        self._lifetime = lifetime

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        text = await asyncio.to_thread(self._path.read_text)
        token = text.strip()
        if not token:
            raise ClientAuthenticationError(message=f"token file {self._path} is empty")
        return AccessToken(token, int(time.time() + self._lifetime))

    async def close(self) -> None:
        return None


def build_credential(settings: Settings) -> AsyncCredential:
    from azure.identity import aio

    mode = settings.credential
    if mode == "static-file":
        assert settings.static_token_file is not None
        return StaticFileCredential(settings.static_token_file)
    # A private CA (sovereign clouds, proxies, the emulator) is trusted for tokens too.
    transport: dict[str, Any] = {"connection_verify": settings.ca_bundle} \
        if settings.ca_bundle else {}
    if mode == "managed-identity":
        return aio.ManagedIdentityCredential(client_id=settings.managed_identity_client_id,
                                             **transport)
    if mode == "workload-identity":
        return aio.WorkloadIdentityCredential(**transport)
    if mode == "environment":
        return aio.EnvironmentCredential(**transport)
    return aio.DefaultAzureCredential(
        managed_identity_client_id=settings.managed_identity_client_id, **transport)


def scrub(message: str, limit: int = 300) -> str:
    """Keep the first line of a credential error: later lines can echo request details."""
    first = message.strip().splitlines()[0] if message.strip() else "credential error"
    return first[:limit]


class TokenCache:
    """One token for the ARM audience, renewed ahead of expiry, fetched by one caller at a time."""

    def __init__(self, credential: AsyncCredential, audience: str) -> None:
        self._credential = credential
        self._scope = f"{audience}/.default"
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def __call__(self) -> str:
        if self._token is not None and time.time() < self._expires - REFRESH_MARGIN:
            return self._token
        async with self._lock:
            if self._token is None or time.time() >= self._expires - REFRESH_MARGIN:
                try:
                    access = await self._credential.get_token(self._scope)
                except ClientAuthenticationError as exc:
                    raise AuthenticationFailed(scrub(exc.message or str(exc))) from None
                except Exception as exc:
                    raise AuthenticationFailed(scrub(f"{type(exc).__name__}: {exc}")) from None
                self._token = access.token
                self._expires = float(access.expires_on)
        assert self._token is not None
        return self._token

    def invalidate(self) -> None:
        """ARM refused the token (revoked or expired early): fetch a new one next time."""
        self._token = None

    async def close(self) -> None:
        await self._credential.close()
