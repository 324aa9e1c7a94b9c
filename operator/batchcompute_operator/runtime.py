"""The process-wide objects: one httpx client, one token cache, one pacer, one observer."""

from __future__ import annotations

import asyncio
import base64
import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from batchcompute_operator.config import Settings
from batchcompute_operator.credentials import (
    CredentialsUnavailable,
    NamespaceIdentities,
    SecretData,
    SecretReader,
    TokenCache,
    build_credential,
)
from batchcompute_operator.service import AttachmentService
from batchcompute_operator.workspace.api import WorkspaceApi
from batchcompute_operator.workspace.client import ArmClient
from batchcompute_operator.workspace.observer import WorkspaceObserver
from batchcompute_operator.workspace.pacing import SubscriptionPacer


@dataclass
class Runtime:
    settings: Settings
    http: httpx.AsyncClient
    tokens: TokenCache
    client: ArmClient
    observer: WorkspaceObserver
    service: AttachmentService
    identities: NamespaceIdentities

    async def close(self) -> None:
        await self.http.aclose()
        await self.tokens.close()
        await self.identities.close()


def kubernetes_secret_reader() -> SecretReader:
    """Reads one Secret with the `kubernetes` client, off the event loop.

    The operator holds no blanket right to Secrets: a namespace that brings its own identity
    grants `get` on that one Secret (README, "Per-namespace identities").
    """
    import kubernetes

    clients: list[Any] = []
    config: Any = kubernetes.config  # untyped module

    def core() -> Any:
        if not clients:  # only namespaces that bring an identity need the client at all
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            clients.append(kubernetes.client.CoreV1Api())
        return clients[0]

    def read(namespace: str, name: str) -> SecretData:
        try:
            secret = core().read_namespaced_secret(name, namespace)
        except kubernetes.client.exceptions.ApiException as exc:
            if exc.status == 404:
                raise CredentialsUnavailable(f"Secret {namespace}/{name} does not exist") \
                    from None
            if exc.status == 403:
                raise CredentialsUnavailable(
                    f"the operator may not read Secret {namespace}/{name}: grant it 'get' on "
                    "that Secret with a Role and RoleBinding in this namespace") from None
            raise CredentialsUnavailable(f"reading Secret {namespace}/{name} failed: "
                                         f"HTTP {exc.status}") from None
        data = {k: base64.b64decode(v).decode("utf-8", "replace")
                for k, v in (secret.data or {}).items()}
        return str(secret.metadata.resource_version), data

    async def read_async(namespace: str, name: str) -> SecretData:
        return await asyncio.to_thread(read, namespace, name)

    return read_async


def build_runtime(settings: Settings) -> Runtime:
    verify: ssl.SSLContext | bool = True
    if settings.ca_bundle:
        verify = ssl.create_default_context(cafile=settings.ca_bundle)
    http = httpx.AsyncClient(
        verify=verify,
        timeout=httpx.Timeout(settings.http_timeout),
        limits=httpx.Limits(max_connections=settings.max_connections,
                            max_keepalive_connections=settings.max_connections),
        follow_redirects=False,  # a redirect could carry the token to another host
        trust_env=False,  # no proxy or netrc surprises: only the configured ARM host
    )
    tokens = TokenCache(build_credential(settings), settings.arm_audience)
    pacer = SubscriptionPacer(settings.buckets, enabled=settings.pacing)
    client = ArmClient(settings.arm_endpoint, settings.api_version, tokens, pacer, http=http,
                       allow_insecure_http=settings.allow_insecure_http)
    api = WorkspaceApi(client)
    observer = WorkspaceObserver(api)
    identities = NamespaceIdentities(settings, kubernetes_secret_reader())
    return Runtime(settings, http, tokens, client, observer,
                   AttachmentService(settings, api, observer, identities), identities)
