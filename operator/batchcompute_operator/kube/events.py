"""Kubernetes Events under the operator's own name, posted off the reconcile path.

A slow or failing API server must not hold up attaching: events go into a bounded queue and
a few posters drain it, retrying what the API server could not take yet. An event that still
cannot be posted after the client's retries is logged and dropped; events are informative,
the status is the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from batchcompute_operator.kube.client import KubeClient, KubeError
from batchcompute_operator.logs import resource

log = logging.getLogger(__name__)

COMPONENT = "batchcompute-operator"
MESSAGE_MAX = 1024


@dataclass(frozen=True)
class InvolvedObject:
    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class PendingEvent:
    obj: InvolvedObject
    type: str
    reason: str
    message: str
    at: datetime


class EventPoster:
    def __init__(self, client: KubeClient, instance: str, *, capacity: int = 20_000,
                 posters: int = 4) -> None:
        self._client = client
        self._instance = instance
        self._queue: asyncio.Queue[PendingEvent] = asyncio.Queue(maxsize=capacity)
        self._posters = posters
        self._tasks: list[asyncio.Task[None]] = []
        self.posted = 0
        self.dropped = 0

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name=f"event poster {i}")
                       for i in range(self._posters)]

    async def stop(self, drain: float = 5.0) -> None:
        """Post what is queued for up to `drain` seconds, then stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout=drain)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def post(self, obj: InvolvedObject, type_: str, reason: str, message: str) -> None:
        event = PendingEvent(obj, type_, reason, message, datetime.now(UTC))
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("event queue full; dropped %s event for %s/%s", reason, obj.namespace,
                        obj.name, extra=resource(obj.namespace, obj.name, obj.uid))

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._client.post_event(event.obj.namespace, self._body(event))
                self.posted += 1
            except KubeError as err:
                self.dropped += 1
                log.warning("could not post %s event for %s/%s: %s", event.reason,
                            event.obj.namespace, event.obj.name, err,
                            extra=resource(event.obj.namespace, event.obj.name, event.obj.uid))
            finally:
                self._queue.task_done()

    def _body(self, event: PendingEvent) -> dict[str, Any]:
        stamp = event.at.strftime("%Y-%m-%dT%H:%M:%SZ")
        micro = event.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        obj = event.obj
        message = event.message if len(event.message) <= MESSAGE_MAX else \
            event.message[:MESSAGE_MAX - 3] + "..."
        return {
            "metadata": {"generateName": f"{obj.name}.", "namespace": obj.namespace},
            "involvedObject": {"apiVersion": obj.api_version, "kind": obj.kind,
                               "namespace": obj.namespace, "name": obj.name, "uid": obj.uid},
            "type": event.type,
            "reason": event.reason,
            "message": message,
            "action": event.reason,
            "count": 1,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "eventTime": micro,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._instance,
        }
