"""kopf wiring: thin handlers that hand a plain view of the resource to the service.

Write budget per attach (README, "Performance"): kopf adds the finalizer (1),
the create handler stores the operation in flight together with kopf's diff-base, both in
status (1), the poll timer stores the result (1), and two events. Timers and resume
handlers return None and patch only what changed, so idle resources cost no writes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf

from batchcompute_operator import GROUP, PLURAL, VERSION
from batchcompute_operator import conditions as cond
from batchcompute_operator.config import Settings
from batchcompute_operator.runtime import Runtime, build_runtime
from batchcompute_operator.service import Outcome, ResourceView, Trigger

SETTINGS = Settings.from_env()
RESOURCE = (GROUP, VERSION, PLURAL)
EVENT_MESSAGE_MAX = 1000


def needs_poll(status: Mapping[str, Any], **_: Any) -> bool:
    """An operation is in flight or a retry is pending: poll; otherwise only resync."""
    if isinstance(status.get("operation"), Mapping):
        return True
    reconciling = cond.get(status.get("conditions"), "Reconciling") or {}
    return reconciling.get("status") == "True"


def settled(status: Mapping[str, Any], **kwargs: Any) -> bool:
    return not needs_poll(status, **kwargs)


def _view(body: kopf.Body) -> ResourceView:
    meta = body.get("metadata", {})
    return ResourceView(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation", 0) or 0),
        spec=dict(body.get("spec", {})),
        status=dict(body.get("status", {})),
    )


def _apply(outcome: Outcome, body: kopf.Body, patch: kopf.Patch) -> None:
    for key, value in outcome.status_patch.items():
        patch.status[key] = value
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason,
                   message=event.message[:EVENT_MESSAGE_MAX])


def _runtime(memo: Any) -> Runtime:
    runtime: Runtime = memo.runtime
    return runtime


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.AiohttpSession | None:
    """kopf's own discovery of the credentials, on a connection pool of bounded size.

    kopf's default pool is unbounded: a burst of status patches opens one TLS connection per
    patch in flight, and each costs memory long after the burst. A bounded pool queues them.
    """
    info = await asyncio.to_thread(kopf.login_via_client, **kwargs)
    if info is None:
        return None
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=SETTINGS.kube_connections,
                                       ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        auth=info.as_aiohttp_basic_auth(),
    )
    return kopf.AiohttpSession(aiohttp_session=session, server=info.server,
                               default_namespace=info.default_namespace,
                               expiration=info.expiration, priority=info.priority)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # kopf's bookkeeping lives in status, so GitOps diffs of metadata stay clean and each
    # handler cycle is a single status PATCH.
    settings.persistence.progress_storage = kopf.StatusProgressStorage(
        field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(
        field="status.kopf.lastHandledConfiguration")
    settings.posting.level = logging.INFO
    settings.posting.loggers = False  # only the operator's own events, not every log line
    settings.peering.standalone = SETTINGS.peering is None
    if SETTINGS.peering is not None:
        settings.peering.name = SETTINGS.peering
        settings.peering.mandatory = True
        # kopf pauses every peer that sees an equal or higher priority; distinct random
        # priorities make exactly one replica active and the others its stand-bys.
        settings.peering.priority = secrets.randbelow(1_000_000)
        settings.peering.lifetime = SETTINGS.peering_lifetime
        settings.peering.clusterwide = not SETTINGS.namespaces
    # Serving named namespaces needs no namespace listing (and so no cluster-wide RBAC);
    # the CRD must then exist before the operator starts.
    settings.scanning.disabled = bool(SETTINGS.namespaces)
    # A timer whose `when` stops matching (poll -> resync once Ready) is usually still
    # finishing the very status patch that flipped it; waiting for it here spares kopf's
    # fallback of re-checking later with a "dummy" status write on every such object.
    settings.background.instant_exit_timeout = 3.0
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    memo.runtime = build_runtime(SETTINGS)


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    runtime = getattr(memo, "runtime", None)
    if runtime is not None:
        await runtime.close()


@kopf.on.probe(id="arm")
def arm_calls(memo: Any, **_: Any) -> dict[str, float]:
    """What this process has asked of ARM, on the liveness endpoint (`/healthz`)."""
    runtime: Runtime | None = getattr(memo, "runtime", None)
    if runtime is None:
        return {}
    return {**dataclasses.asdict(runtime.client.stats), "lists": runtime.observer.lists}


@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
@kopf.on.resume(*RESOURCE)
async def reconcile(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
    outcome = await _runtime(memo).service.reconcile(_view(body), Trigger.CHANGE)
    _apply(outcome, body, patch)


@kopf.timer(*RESOURCE, interval=SETTINGS.poll_interval, initial_delay=SETTINGS.poll_interval,
            when=needs_poll)
async def poll(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
    outcome = await _runtime(memo).service.reconcile(_view(body), Trigger.POLL)
    _apply(outcome, body, patch)


@kopf.timer(*RESOURCE, interval=SETTINGS.resync_interval,
            initial_delay=SETTINGS.resync_interval, when=settled)
async def resync(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
    outcome = await _runtime(memo).service.reconcile(_view(body), Trigger.RESYNC)
    _apply(outcome, body, patch)


@kopf.on.delete(*RESOURCE)
async def detach(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
    outcome = await _runtime(memo).service.detach(_view(body))
    _apply(outcome, body, patch)
    if not outcome.done:
        raise kopf.TemporaryError("detach still in progress", delay=outcome.retry_in or 5)
