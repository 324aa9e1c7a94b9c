"""The process-wide objects: one httpx client, one token cache, one pacer, one observer."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import httpx

from batchcompute_operator.config import Settings
from batchcompute_operator.credentials import TokenCache, build_credential
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

    async def close(self) -> None:
        await self.http.aclose()
        await self.tokens.close()


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
    return Runtime(settings, http, tokens, client, observer,
                   AttachmentService(settings, api, observer))
