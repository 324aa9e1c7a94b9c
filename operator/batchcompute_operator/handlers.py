"""kopf wiring only: watching, the finalizer, deletion, peering. The engine does the rest.

kopf hands every watch event to the engine (`observe`), which keeps a small record per
resource and acts from one loop per workspace: there are no per-object timers or daemons, so
kopf keeps no body and no task per idle object. kopf's own change detection is not used (the
engine compares generations), so its diff-base storage writes nothing; the deletion handler
waits for the engine to detach and lets kopf remove the finalizer.

Write budget per attach (README, "Performance"): kopf adds the finalizer (1); the engine
acknowledges the generation before any ARM call (1) and records the result (1); two events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
from collections.abc import Collection, Iterable
from typing import Any

import aiohttp
import kopf
import uvloop

from batchcompute_operator import GROUP, PLURAL, VERSION
from batchcompute_operator.config import Settings
from batchcompute_operator.engine.records import FINALIZER
from batchcompute_operator.health import HealthServer
from batchcompute_operator.kube.client import Connection
from batchcompute_operator.runtime import Runtime, build_runtime

RESOURCE = (GROUP, VERSION, PLURAL)
log = logging.getLogger(__name__)


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's change detection is unused: nothing to build, compare or store per event."""

    def build(self, *, body: kopf.Body,
              extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return kopf.BodyEssence()

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def _launch(memo: Any) -> tuple[Settings, str, int]:
    """Settings, peering identity and priority that `__main__` read once and put in the memo."""
    settings: Settings = memo.settings
    return settings, str(memo.identity), int(memo.priority)


def _runtime(memo: Any) -> Runtime:
    runtime: Runtime = memo.runtime
    return runtime


# The kubernetes client's kubeconfig loader is not thread-safe: it publishes the temporary
# file for an embedded CA before writing it, so a second loader running at the same moment
# can read it empty ("no certificate or crl found") and kopf's login waits 60 s to retry.
_LOADING = threading.Lock()


def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The service account in a cluster, else the kubeconfig, read by kopf itself.

    The kubernetes client (about 30 MiB once imported) is loaded only for a kubeconfig whose
    user kopf cannot read credentials from: exec and auth-provider plugins, token files.
    """
    info = kopf.login_with_service_account(**kwargs)  # None outside a pod
    if info is not None:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), \
            os.environ.get("KUBERNETES_SERVICE_PORT")
        if host and port:
            # The address the kubelet gives every pod, as the kubernetes client uses it: no
            # dependence on cluster DNS (kopf's own default is kubernetes.default.svc).
            host = f"[{host}]" if ":" in host else host
            info = dataclasses.replace(info, server=f"https://{host}:{port}")
        return info
    try:
        info = kopf.login_with_kubeconfig(**kwargs)
    except (kopf.LoginError, KeyError):
        info = None  # the kubernetes client reports what is wrong with the kubeconfig
    if info is not None and (info.token or info.username or info.certificate_path
                             or info.certificate_data):
        return info
    with _LOADING:
        return kopf.login_via_client(**kwargs)


async def connection(settings: kopf.OperatorSettings | None = None) -> Connection:
    """The API server and credentials, resolved the way kopf resolves its own."""
    info = await asyncio.to_thread(_login, logger=log,
                                   settings=settings or kopf.OperatorSettings())
    if info is None:
        raise kopf.LoginError("no Kubernetes credentials found (in-cluster or kubeconfig)")
    return Connection(server=str(info.server), ssl=info.as_ssl_context(),
                      headers=info.as_http_headers())


@kopf.on.login()
async def login(memo: Any, **kwargs: Any) -> kopf.AiohttpSession | None:
    """kopf's own discovery of the credentials, on a connection pool of bounded size.

    kopf's default pool is unbounded: a burst of patches opens one TLS connection per patch
    in flight, and each costs memory long after the burst. A bounded pool queues them.
    """
    settings, _, _ = _launch(memo)
    info = await asyncio.to_thread(_login, **kwargs)
    if info is None:
        return None
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=settings.kube_connections,
                                       ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
    )
    return kopf.AiohttpSession(aiohttp_session=session, server=info.server,
                               default_namespace=info.default_namespace,
                               expiration=info.expiration, priority=info.priority)


def tune(settings: kopf.OperatorSettings, config: Settings, identity: str,
         priority: int) -> None:
    """kopf's settings for this operator (also what `make bench` measures kopf's own CPU with)."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.diffbase_storage = NoDiffBase()
    # Retries of the deletion handler keep their progress in status, out of GitOps diffs.
    settings.persistence.progress_storage = kopf.StatusProgressStorage(
        field="status.kopf.progress")
    settings.posting.enabled = False  # the engine posts its own events, under its own name
    settings.posting.reporting_component = "batchcompute-operator"
    settings.posting.reporting_instance = identity
    settings.peering.standalone = config.peering is None
    if config.peering is not None:
        settings.peering.name = config.peering
        settings.peering.mandatory = True
        # kopf pauses every peer that sees an equal or higher priority; distinct random
        # priorities make exactly one replica active and the others its stand-bys.
        settings.peering.priority = priority
        settings.peering.lifetime = config.peering_lifetime
        settings.peering.clusterwide = not config.namespaces
    # Serving named namespaces needs no namespace listing (and so no cluster-wide RBAC);
    # the CRD must then exist before the operator starts.
    settings.scanning.disabled = bool(config.namespaces)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # A watch that has carried nothing, not even a bookmark, for a resync interval is opened
    # again from its last resourceVersion: a stream that stalls with its connection open
    # would otherwise hide new resources and deletions for kopf's default 70 s.
    settings.watching.inactivity_timeout = min(settings.watching.inactivity_timeout,
                                               config.resync_interval)
    settings.watching.chunk_size = 500  # the start-up listing arrives in pages, not at once
    settings.queueing.idle_timeout = 1.0  # per-object workers go soon after their last event


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    config, identity, priority = _launch(memo)
    tune(settings, config, identity, priority)
    runtime = build_runtime(config, lambda: connection(settings), identity=identity,
                            priority=priority)
    runtime.start()
    memo.runtime = runtime
    memo.started = asyncio.Event()
    memo.health = HealthServer(runtime, started=memo.started)
    await memo.health.start()
    memo.started.set()


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    health: HealthServer | None = getattr(memo, "health", None)
    if health is not None:
        await health.stop()
    runtime: Runtime | None = getattr(memo, "runtime", None)
    if runtime is not None:
        await runtime.close()


@kopf.on.event(*RESOURCE)
async def observe(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    _runtime(memo).engine.observe(event.get("type"), event["object"])


# No `when=` filter here, though observe-only resources need no detach: kopf evaluates a
# filter on every watch event of every resource, which costs more CPU than all the rest of
# its event handling; the engine releases an observe-only resource at once instead.
@kopf.on.delete(*RESOURCE)
async def release(body: kopf.Body, memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    settings = runtime.settings
    if not await runtime.engine.release(body, wait=settings.detach_wait):
        raise kopf.TemporaryError("the detach is still in progress",
                                  delay=settings.poll_interval)


class ProcessMemo(kopf.Memo):
    """The one memo of the process, handed to every resource as it is.

    kopf copies its memo for each resource it sees and keeps the copy as long as the resource
    exists; ours holds only what the whole process shares (settings, the runtime), so each
    copy would be about 300 bytes of nothing per attachment.
    """

    def __copy__(self) -> ProcessMemo:
        return self


def run(settings: Settings, identity: str, priority: int, namespaces: Collection[str], *,
        registry: kopf.OperatorRegistry | None = None,
        liveness_endpoint: str | None = None) -> None:
    """Start kopf with the handlers above (or those of `registry`, as `make bench` measures
    kopf alone); returns when the operator stops.

    On uvloop, as kopf's own command line runs: every watch event, patch and ARM call goes
    through the event loop, and uvloop's spends less CPU on each than asyncio's own.
    """
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        kopf.run(
            loop=runner.get_loop(),
            registry=registry,
            liveness_endpoint=liveness_endpoint,
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            standalone=settings.peering is None,
            peering_name=settings.peering,
            priority=priority,
            identity=identity,  # type: ignore[arg-type]
            memo=ProcessMemo(settings=settings, identity=identity, priority=priority),
        )
