"""The process-wide objects: one httpx client per remote, one token cache, one pacer, the engine."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from batchcompute_operator import GROUP, PLURAL, VERSION, metrics
from batchcompute_operator.collector import Collector
from batchcompute_operator.config import Settings
from batchcompute_operator.credentials import (
    CredentialsUnavailable,
    NamespaceIdentities,
    SecretData,
    SecretReader,
    TokenCache,
    build_credential,
)
from batchcompute_operator.engine.engine import Engine, Services
from batchcompute_operator.engine.identities import Identities
from batchcompute_operator.kube.client import Connector, KubeClient, KubeError
from batchcompute_operator.kube.events import EventPoster
from batchcompute_operator.kube.peering import PeeringGate
from batchcompute_operator.workspace.api import WorkspaceApi
from batchcompute_operator.workspace.client import ArmClient, TokenGetter
from batchcompute_operator.workspace.pacing import SubscriptionPacer
from batchcompute_operator.workspace.transport import arm_http


@dataclass
class Runtime:
    settings: Settings
    http: httpx.AsyncClient
    tokens: TokenCache
    client: ArmClient
    kube: KubeClient
    events: EventPoster
    gate: PeeringGate
    identities: NamespaceIdentities
    engine: Engine
    collector: Collector

    def start(self) -> None:
        self.events.start()
        self.gate.start()
        self.collector.start()

    async def close(self) -> None:
        await self.collector.stop()
        await self.engine.stop()
        await self.gate.stop()
        await self.events.stop()
        await self.kube.close()
        await self.http.aclose()
        await self.tokens.close()
        await self.identities.close()


def secret_reader(kube: KubeClient) -> SecretReader:
    """Reads one Secret a namespace granted the operator (README, "Per-namespace identities")."""

    async def read(namespace: str, name: str) -> SecretData:
        path = f"/api/v1/namespaces/{namespace}/secrets/{name}"
        try:
            body = await kube.get_json(path, missing_ok=True)
        except KubeError as err:
            if err.status == 403:
                raise CredentialsUnavailable(
                    f"the operator may not read Secret {namespace}/{name}: grant it 'get' on "
                    "that Secret with a Role and RoleBinding in this namespace") from None
            raise CredentialsUnavailable(f"reading Secret {namespace}/{name} failed: {err}") \
                from None
        if body is None:
            raise CredentialsUnavailable(f"Secret {namespace}/{name} does not exist")
        raw = body.get("data") or {}
        data = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in raw.items()
                if isinstance(k, str) and isinstance(v, str)}
        version = str((body.get("metadata") or {}).get("resourceVersion", ""))
        return version, data

    return read


def peering_paths(settings: Settings) -> Sequence[str]:
    if settings.peering is None:
        return ()
    if not settings.namespaces:
        return (f"/apis/kopf.dev/v1/clusterkopfpeerings/{settings.peering}",)
    return tuple(f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings/{settings.peering}"
                 for ns in settings.namespaces)


def resource_path(namespace: str | None = None) -> str:
    if namespace:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return f"/apis/{GROUP}/{VERSION}/{PLURAL}"


def workspace_api(settings: Settings, tokens: TokenCache,
                  http: httpx.AsyncClient) -> WorkspaceApi:
    """The workspace REST API as the operator (and `export`) call it: paced per subscription,
    tokens only for the configured ARM host, the configured api-version."""
    client = ArmClient(settings.arm_endpoint, settings.api_version, tokens,
                       SubscriptionPacer(settings.buckets, enabled=settings.pacing), http=http,
                       allow_insecure_http=settings.allow_insecure_http,
                       reads_at_once=settings.max_reads)
    return WorkspaceApi(client)


def build_runtime(settings: Settings, connect: Connector, *, identity: str,
                  priority: int) -> Runtime:
    if not settings.metrics_port:
        metrics.turn_off()
    http = arm_http(settings)
    tokens = TokenCache(build_credential(settings), settings.arm_audience)
    api = workspace_api(settings, tokens, http)
    # A status write that fails is owed and made again at the next poll anyway; the client
    # backs off no longer than a poll interval, so the write that was failing when the API
    # server recovered goes through within one.
    kube = KubeClient(connect, connections=settings.kube_connections,
                      max_backoff=min(8.0, settings.poll_interval))
    events = EventPoster(kube, identity)
    gate = PeeringGate(kube if settings.peering else None, peering_paths(settings), identity,
                       priority)
    namespace_identities = NamespaceIdentities(settings, secret_reader(kube))

    async def resolve(namespace: str, secret: str) -> TokenGetter:
        return await namespace_identities.get(namespace, secret)

    engine = Engine(Services(settings, api, kube, events, gate, Identities(resolve)))
    return Runtime(settings, http, tokens, api.client, kube, events, gate, namespace_identities,
                   engine, Collector())
