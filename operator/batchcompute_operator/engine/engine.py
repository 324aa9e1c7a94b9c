"""The engine: every resource's small record, one loop per (identity, workspace), claims.

kopf hands each watch event to `observe` (no I/O there); the record is placed in the loop of
the workspace it targets, and that loop is woken only when something it must act on changed:
a new resource or generation, a finalizer that appeared, a deletion. Everything else is found
by the loop's periodic LIST. A paused replica's loops wait on the peering gate.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from batchcompute_operator.config import Settings
from batchcompute_operator.engine.identities import Identities
from batchcompute_operator.engine.loop import WorkspaceLoop
from batchcompute_operator.engine.records import UNPLACED, LoopKey, Record, RecordBuilder
from batchcompute_operator.kube.client import KubeClient
from batchcompute_operator.kube.events import EventPoster
from batchcompute_operator.kube.peering import PeeringGate
from batchcompute_operator.spec import WorkspaceRef
from batchcompute_operator.workspace.api import WorkspaceApi

log = logging.getLogger(__name__)


@dataclass
class Services:
    """What the loops use to act; built once per process (see runtime.py)."""

    settings: Settings
    api: WorkspaceApi
    kube: KubeClient
    events: EventPoster
    gate: PeeringGate
    identities: Identities
    clock: Callable[[], float] = time.monotonic


class Engine:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.records: dict[str, Record] = {}
        self.loops: dict[LoopKey, WorkspaceLoop] = {}
        self._placed: dict[str, LoopKey] = {}
        self._claims: dict[tuple[tuple[str, str, str], str], str] = {}
        self._claimed: dict[str, tuple[tuple[str, str, str], str]] = {}  # uid -> its claim
        self._releases: dict[str, asyncio.Future[None]] = {}
        self._builder = RecordBuilder()
        self.verified: set[str] = set()  # resources compared with ARM since this process began
        self.listed = 0  # objects kopf's start-up listing has handed over so far
        self.started = services.clock()
        self._stopping = False

    # -- from kopf -----------------------------------------------------------------------------

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> Record | None:
        """A watch event (type None: the initial listing). Cheap: no I/O, no awaiting."""
        meta = body.get("metadata")
        uid = meta.get("uid") if isinstance(meta, Mapping) else None
        if not isinstance(uid, str):
            return None
        if event_type is None:
            self.listed += 1
        if event_type == "DELETED":
            self.forget(uid)
            return None
        previous = self.records.get(uid)
        record = self._builder.build(body, previous)
        if record is None:
            return None
        if previous is not None and 0 < record.resource_version < previous.resource_version:
            return previous  # an older event than what our own write already returned
        self._place(record, previous)
        return record

    def written(self, body: Mapping[str, Any]) -> Record | None:
        """The answer to one of our status patches: the newest state we know."""
        return self.observe("MODIFIED", body)

    async def release(self, body: Mapping[str, Any], wait: float) -> bool:
        """Wait (up to `wait` seconds) until this resource's deletion has been carried out."""
        record = self.observe("MODIFIED", body)
        if record is None:
            return True
        future = self._releases.get(record.uid)
        if future is None:
            future = self._releases[record.uid] = asyncio.get_running_loop().create_future()
        loop = self.loops.get(self._placed.get(record.uid, UNPLACED))
        if loop is not None:
            loop.wake(record.uid)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout=wait)
        except TimeoutError:
            return False
        return True

    # -- for the loops -------------------------------------------------------------------------

    def released(self, uid: str) -> None:
        future = self._releases.get(uid)
        if future is None:
            future = self._releases[uid] = asyncio.get_running_loop().create_future()
        if not future.done():
            future.set_result(None)

    def is_released(self, uid: str) -> bool:
        future = self._releases.get(uid)
        return future is not None and future.done()

    def claim(self, workspace: WorkspaceRef, name: str, record: Record) -> Record | None:
        """Serialise every writer of one workspace compute name in this process.

        Returns None when `record` may create the compute, or the live resource that holds the
        name. Claims are taken synchronously, so two loops can never both pass.
        """
        key = (workspace.key, sys.intern(name.lower()))
        holder_uid = self._claims.get(key)
        if holder_uid is not None and holder_uid != record.uid:
            holder = self.records.get(holder_uid)
            if holder is not None and not holder.deleting:
                return holder
        previous = self._claimed.get(record.uid)
        if previous is not None and previous != key and self._claims.get(previous) == record.uid:
            del self._claims[previous]
        self._claims[key] = record.uid
        self._claimed[record.uid] = key
        return None

    def forget(self, uid: str) -> None:
        self.records.pop(uid, None)
        self.verified.discard(uid)
        key = self._placed.pop(uid, None)
        loop = self.loops.get(key) if key is not None else None
        if loop is not None:
            loop.remove(uid)
        claim = self._claimed.pop(uid, None)
        if claim is not None and self._claims.get(claim) == uid:
            del self._claims[claim]
        future = self._releases.pop(uid, None)
        if future is not None and not future.done():
            future.set_result(None)

    def retire(self, loop: WorkspaceLoop) -> None:
        if self.loops.get(loop.key) is loop and not loop.members:
            del self.loops[loop.key]

    # -- placement -----------------------------------------------------------------------------

    def _key(self, record: Record) -> tuple[LoopKey, WorkspaceRef | None]:
        spec = record.valid
        if record.deleting:
            target = record.target()
            if target is None:
                return UNPLACED, None
            ws = self._builder.workspace(target[0])
            identity = self._identity(record) if spec is not None and \
                spec.workspace.key == ws.key else ""
            return LoopKey(identity, ws.key), ws
        if spec is None or self.settings.workspace_policy.denial(record.namespace,
                                                                  spec.workspace) is not None:
            return UNPLACED, None
        return LoopKey(self._identity(record), spec.workspace.key), spec.workspace

    @staticmethod
    def _identity(record: Record) -> str:
        spec = record.valid
        if spec is None or spec.credentials_secret is None:
            return ""
        return f"{record.namespace}/{spec.credentials_secret}"

    def _place(self, record: Record, previous: Record | None) -> None:
        self.records[record.uid] = record
        key, workspace = self._key(record)
        old = self._placed.get(record.uid)
        if old is not None and old != key:
            old_loop = self.loops.get(old)
            if old_loop is not None:
                old_loop.remove(record.uid)
        loop = self.loops.get(key)
        if loop is None:
            loop = self.loops[key] = WorkspaceLoop(self, key, workspace)
            if not self._stopping:
                loop.start()
        self._placed[record.uid] = loop.key  # one key object per loop, not one per record
        urgent = previous is None or old != key or previous.generation != record.generation \
            or previous.deleting != record.deleting or previous.finalized != record.finalized \
            or not record.acknowledged
        loop.add(record.uid, wake=urgent)

    # -- life cycle and health -----------------------------------------------------------------

    async def stop(self) -> None:
        self._stopping = True
        loops = list(self.loops.values())
        await asyncio.gather(*(loop.stop() for loop in loops), return_exceptions=True)

    def stuck_loops(self, limit: float) -> list[str]:
        """Loops whose current pass has run longer than `limit` seconds: a bug, not load."""
        now = self.services.clock()
        return [loop.describe() for loop in self.loops.values()
                if loop.pass_started is not None and now - loop.pass_started > limit]

    def census(self) -> Counter[tuple[str, str]]:
        """Attachments by provisioning state and Ready status, for the metrics gauge."""
        counts: Counter[tuple[str, str]] = Counter()
        for record in self.records.values():
            ready = record.recorded.condition("Ready")
            counts[(record.recorded.provisioning_state or "None",
                    ready.status if ready is not None else "Unknown")] += 1
        return counts

    @property
    def unverified(self) -> int:
        return sum(1 for uid in self.records if uid not in self.verified)
