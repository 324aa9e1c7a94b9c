"""Azure credentials via azure-identity, with one token cache per process.

The default chain covers workload identity, managed identity and an environment service
principal. `static-file` reads a token from a mounted file on every refresh, for local
development against the emulator. Credential errors are reduced to their message: no
secret, assertion or token ever reaches a log line, event or status.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from azure.core.exceptions import ClientAuthenticationError

from batchcompute_operator.config import Settings
from batchcompute_operator.workspace.errors import ArmError, AuthenticationFailed

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

    def __init__(self, credential: AsyncCredential, audience: str, key: str = "operator") -> None:
        self.key = key  # names the principal: ARM paces per principal, caches are kept apart
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


# -- per-namespace identities ------------------------------------------------------------------

SecretData = tuple[str, Mapping[str, str]]  # (resourceVersion, decoded data)
SecretReader = Callable[[str, str], Awaitable[SecretData]]


class CredentialsUnavailable(ArmError):
    """A namespace's own identity cannot be used; the message says what the owner must fix."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(0, "CredentialsUnavailable", message, retryable=retryable)


class NamespaceIdentities:
    """Token caches for identities that namespaces bring in a Secret of their own.

    Secret keys: `clientId` and `tenantId`, plus either `clientSecret` (a service principal) or
    nothing more (workload identity: the operator's projected ServiceAccount token is exchanged
    for that client id, so the identity's federated credential must trust the operator). A
    Secret is only ever read from the namespace of the resource that names it.
    """

    def __init__(self, settings: Settings, read_secret: SecretReader) -> None:
        self._settings = settings
        self._read = read_secret
        self._caches: dict[tuple[str, str], tuple[str, TokenCache]] = {}

    async def get(self, namespace: str, secret_name: str) -> TokenCache:
        version, data = await self._read(namespace, secret_name)
        cached = self._caches.get((namespace, secret_name))
        if cached is not None and cached[0] == version:
            return cached[1]
        tokens = TokenCache(self._credential(namespace, secret_name, data),
                            self._settings.arm_audience,
                            key=f"{namespace}/{secret_name}/{data.get('clientId', '')}")
        if cached is not None:
            await cached[1].close()
        self._caches[(namespace, secret_name)] = (version, tokens)
        return tokens

    def _credential(self, namespace: str, name: str, data: Mapping[str, str]) -> AsyncCredential:
        from azure.identity import aio

        missing = [k for k in ("clientId", "tenantId") if not data.get(k)]
        if missing:
            raise CredentialsUnavailable(
                f"Secret {namespace}/{name} lacks {', '.join(missing)}", retryable=False)
        transport: dict[str, Any] = {"connection_verify": self._settings.ca_bundle} \
            if self._settings.ca_bundle else {}
        if data.get("clientSecret"):
            return aio.ClientSecretCredential(data["tenantId"], data["clientId"],
                                              data["clientSecret"], **transport)
        token_file = os.environ.get("AZURE_FEDERATED_TOKEN_FILE")
        if not token_file:
            raise CredentialsUnavailable(
                f"Secret {namespace}/{name} has no clientSecret, and the operator has no "
                "federated token (workload identity) to exchange for that client id",
                retryable=False)
        return aio.WorkloadIdentityCredential(tenant_id=data["tenantId"],
                                              client_id=data["clientId"],
                                              token_file_path=token_file, **transport)

    async def close(self) -> None:
        for _, tokens in self._caches.values():
            await tokens.close()
        self._caches.clear()
