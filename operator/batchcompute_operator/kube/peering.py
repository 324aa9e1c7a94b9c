"""Follows kopf's peering object, so the engine pauses exactly when kopf does.

kopf pauses a replica that sees a live peer of higher (or equal) priority in the peering
object's status, and stops its watches; the engine's own loops must then stop calling ARM
and writing to Kubernetes too. kopf documents the object's shape (`status` maps each peer's
identity to its `priority`, `lastseen` and `lifetime`), and this applies kopf's rule to it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from batchcompute_operator.kube.client import KubeClient, KubeError

log = logging.getLogger(__name__)

CHECK_SECONDS = 2.0


def _parse_time(raw: Any) -> float | None:
    if not isinstance(raw, str):
        return None
    try:
        stamp = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def blocking_peers(status: Mapping[str, Any] | None, identity: str, priority: int,
                   now: float) -> list[tuple[str, float]]:
    """Live peers that make kopf pause us, with the time each would expire."""
    found = []
    for peer, info in (status or {}).items():
        if peer == identity or not isinstance(info, Mapping):
            continue
        seen = _parse_time(info.get("lastseen"))
        try:
            lifetime = float(info.get("lifetime", 60))
            their = int(info.get("priority", 0))
        except (TypeError, ValueError):
            continue
        deadline = (seen if seen is not None else now) + lifetime
        if deadline > now and their >= priority:
            found.append((str(peer), deadline))
    return found


class PeeringGate:
    """`active` is set while this replica may act; always set when running standalone."""

    def __init__(self, client: KubeClient | None, paths: Sequence[str], identity: str,
                 priority: int) -> None:
        self._client = client
        self._paths = tuple(paths)
        self._identity = identity
        self._priority = priority
        self.active = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        if client is None or not self._paths:
            self.active.set()

    @property
    def standalone(self) -> bool:
        return self._client is None or not self._paths

    def start(self) -> None:
        if not self.standalone:
            self._task = asyncio.create_task(self._run(), name="peering gate")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def wait(self) -> None:
        await self.active.wait()

    async def check(self) -> float:
        """Look once; returns how long the current verdict holds at most."""
        assert self._client is not None
        now = time.time()
        blockers: list[tuple[str, float]] = []
        for path in self._paths:
            body = await self._client.get_json(path, missing_ok=True)
            status = body.get("status") if isinstance(body, Mapping) else None
            blockers += blocking_peers(status if isinstance(status, Mapping) else None,
                                       self._identity, self._priority, now)
        if blockers:
            if self.active.is_set():
                log.info("pausing: peers %s have priority over this replica",
                         ", ".join(sorted(p for p, _ in blockers)))
            self.active.clear()
            return max(0.5, min(CHECK_SECONDS, min(d for _, d in blockers) - now))
        if not self.active.is_set():
            log.info("resuming: no live peer has priority over this replica")
        self.active.set()
        return CHECK_SECONDS

    async def _run(self) -> None:
        while True:
            try:
                delay = await self.check()
            except KubeError as err:
                # Unknown: keep the last verdict, as kopf keeps its own until it knows better.
                log.warning("could not read the peering object: %s", err)
                delay = CHECK_SECONDS
            await asyncio.sleep(delay)
