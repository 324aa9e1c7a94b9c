"""Kubernetes Events under the operator's own name, posted off the reconcile path.

A slow or failing API server must not hold up attaching: events go into a bounded queue and
a few posters drain it. An event the API server could not take (no answer, 429, 5xx) is
offered again, backing off, for up to RETRY_FOR seconds; one it refuses for good (403, 404,
422) is logged and dropped: events are informative, the status is the record.

Each event gets its name when it is queued (the object's name and a nanosecond stamp, as
client-go's recorder does), so a POST the API server stored but whose answer was lost is
answered 409 when retried, and counts as posted: posting is retried, never duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from batchcompute_operator.kube.client import RETRYABLE, KubeClient, KubeError
from batchcompute_operator.logs import resource

log = logging.getLogger(__name__)

COMPONENT = "batchcompute-operator"
MESSAGE_MAX = 1024
NAME_MAX = 253 - 17  # room for "." and 16 hex digits in an object name
RETRY_FOR = 600.0  # seconds an event is offered again while the API server cannot take it
RETRY_DELAY_MAX = 8.0


@dataclass(frozen=True, slots=True)
class InvolvedObject:
    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """Kept small: when the API server is slower than a burst, thousands wait in the queue."""

    obj: InvolvedObject
    type: str
    reason: str
    message: str
    stamp: int  # when it happened, in ns since the epoch; unique, so it names the event too

    @property
    def name(self) -> str:
        """Chosen once: a retried POST that was stored before answers 409."""
        return f"{self.obj.name[:NAME_MAX]}.{self.stamp:x}"

    @property
    def at(self) -> datetime:
        return datetime.fromtimestamp(self.stamp / 1e9, UTC)


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
        self._stamp = 0  # the last nanosecond stamp given to an event name
        self._failing = False  # posting failed and has not worked since (logged once)

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
        self._stamp = max(time.time_ns(), self._stamp + 1)
        event = PendingEvent(obj, type_, reason, message, self._stamp)
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
                await self._deliver(event)
            finally:
                self._queue.task_done()

    async def _deliver(self, event: PendingEvent) -> None:
        body = self._body(event)
        obj = event.obj
        delay = 1.0
        while True:
            try:
                await self._client.post_event(obj.namespace, body)
            except KubeError as err:
                age = (time.time_ns() - event.stamp) / 1e9
                if (err.status == 0 or err.status in RETRYABLE) and age < RETRY_FOR:
                    if not self._failing:
                        self._failing = True
                        log.warning("could not post %s event for %s/%s (%s); trying again",
                                    event.reason, obj.namespace, obj.name, err,
                                    extra=resource(obj.namespace, obj.name, obj.uid))
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                    delay = min(2 * delay, RETRY_DELAY_MAX)
                    continue
                self.dropped += 1
                log.warning("could not post %s event for %s/%s: %s", event.reason,
                            obj.namespace, obj.name, err,
                            extra=resource(obj.namespace, obj.name, obj.uid))
                return
            self.posted += 1
            if self._failing:
                self._failing = False
                log.info("posting events works again")
            return

    def _body(self, event: PendingEvent) -> dict[str, Any]:
        at = event.at
        stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        micro = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        obj = event.obj
        message = event.message if len(event.message) <= MESSAGE_MAX else \
            event.message[:MESSAGE_MAX - 3] + "..."
        return {
            "metadata": {"name": event.name, "namespace": obj.namespace},
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
