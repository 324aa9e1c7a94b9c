"""One loop per (identity, workspace): one paged LIST serves every attachment in it.

A pass acknowledges new generations first (a status write, before any ARM call), then LISTs
the workspace's computes and hands the members that need a look to a few workers, which
decide (pure, `reconcile`) and act. While anything is in flight the loop runs at the poll
interval, otherwise at the resync interval, so drift is acted on in the pass whose LIST shows
it. Idle members cost nothing between passes: no task, no timer, no write.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from batchcompute_operator import metrics
from batchcompute_operator.compute import ComputeView
from batchcompute_operator.credentials import CredentialsUnavailable
from batchcompute_operator.engine.records import API_VERSION, LoopKey, Record
from batchcompute_operator.kube.client import FIRST_STATUS, STATUS, KubeError
from batchcompute_operator.kube.events import InvolvedObject
from batchcompute_operator.logs import resource
from batchcompute_operator.reconcile import (
    WAIT,
    Action,
    Decision,
    Event,
    Failure,
    Observed,
    PutKind,
    Situation,
    acknowledge,
    claimed,
    decide_attach,
    decide_detach,
    decide_failure,
)
from batchcompute_operator.spec import AttachmentSpec, WorkspaceRef
from batchcompute_operator.status import Recorded
from batchcompute_operator.workspace.client import TokenGetter
from batchcompute_operator.workspace.errors import ArmError, AuthenticationFailed

if TYPE_CHECKING:
    from batchcompute_operator.engine.engine import Engine

log = logging.getLogger(__name__)

COALESCE = 0.1  # seconds a wake-up waits for more of a burst of creations to arrive
MIN_GAP = 0.1  # seconds between the starts of two passes, whatever wakes the loop
FINALIZER_WAIT = 1.0  # seconds a new object's acknowledgement waits for kopf's finalizer at most
KIND = "BatchComputeAttachment"


@dataclass(slots=True)
class Tracking:
    """What this process knows about one member beyond its status (lost on restart)."""

    submitted: float = 0.0  # when ARM answered our last PUT/DELETE
    kind: str | None = None  # what that write was: Attach or Detach
    url: str | None = None  # its operation
    failures: int = 0
    retry_at: float = 0.0
    owed: bool = False  # a status write failed and must be made again
    # The status and events of a write that got no good answer: if the API server applied it
    # all the same (a later record holds exactly that status), its events are still to post.
    unanswered: tuple[Recorded, tuple[Event, ...]] | None = None

    @property
    def pending(self) -> bool:
        """An ARM write in flight, a status write owed, or a retry to come."""
        return self.kind is not None or self.owed or bool(self.failures)


@dataclass(frozen=True)
class Snapshot:
    started: float  # when the LIST was sent: nothing older than this is missed
    computes: dict[str, ComputeView]

    def get(self, name: str) -> ComputeView | None:
        return self.computes.get(name.lower())


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class WorkspaceLoop:
    def __init__(self, engine: Engine, key: LoopKey, workspace: WorkspaceRef | None) -> None:
        self.engine = engine
        self.services = engine.services
        self.settings = engine.settings
        self.key = key
        self.workspace = workspace
        self.members: set[str] = set()
        self._joined: dict[str, float] = {}  # when each member was first seen
        self.fresh: set[str] = set()  # to look at in the next pass (new, changed, deleting)
        self.tracking: dict[str, Tracking] = {}
        self.snapshot: Snapshot | None = None
        self.last_full = float("-inf")  # when the last LIST that verified every member began
        self.last_pass = float("-inf")
        self.list_retry_at = 0.0
        self.list_failures = 0
        self.pass_started: float | None = None
        self._last_said = ""  # the last failure logged, so a repeated one is not logged again
        self._refreshing: asyncio.Task[Snapshot] | None = None
        self._refresh_began = float("-inf")
        self._woken = False  # a member needs a look: a pass follows soon
        self._changed = asyncio.Event()  # woken, or what is due changed: the sleep is re-timed
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()
        self._busy: set[str] = set()
        self._workers: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    # -- membership ----------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"loop {self.describe()}")
        metrics.workspace_loops.inc()

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._workers) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def add(self, uid: str, *, wake: bool) -> None:
        self.members.add(uid)
        self._joined.setdefault(uid, self.services.clock())
        if wake:
            self.wake(uid)

    def remove(self, uid: str) -> None:
        self.members.discard(uid)
        self._joined.pop(uid, None)
        self.fresh.discard(uid)
        track = self.tracking.pop(uid, None)
        if track is not None and track.kind is not None:
            metrics.operations_in_flight.labels(track.kind).dec()
        self.wake()

    def wake(self, uid: str | None = None) -> None:
        if uid is not None:
            self.fresh.add(uid)
        self._woken = True
        self._changed.set()

    def _retime(self) -> None:
        """A worker sent an ARM write or scheduled a retry: the sleeping loop's deadline,
        computed before it, may be a whole resync interval too late."""
        self._changed.set()

    def describe(self) -> str:
        ws = "/".join(self.key.workspace) if self.key.workspace else "(no workspace)"
        return f"{ws} as {self.key.identity or 'operator'}"

    # -- scheduling ----------------------------------------------------------------------------

    async def _run(self) -> None:
        clock = self.services.clock
        try:
            while True:
                await self._sleep()
                if not self.members:
                    if not self._busy and not self._queue:
                        self.engine.retire(self)
                        return
                    continue
                await self.services.gate.wait()
                self.pass_started = clock()
                try:
                    await self._pass()
                except Exception:
                    log.exception("workspace %s: pass failed", self.describe())
                    await asyncio.sleep(self.settings.poll_interval)
                finally:
                    self.pass_started = None
        finally:
            metrics.workspace_loops.dec()

    async def _sleep(self) -> None:
        clock = self.services.clock
        gap = self.last_pass + MIN_GAP - clock()
        if gap > 0:
            await asyncio.sleep(gap)
        while not self._woken:
            delay = self._due() - clock()
            if delay <= 0:
                await asyncio.sleep(0)
                return
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=delay)
            except TimeoutError:
                return
        self._woken = False
        self._changed.clear()
        await asyncio.sleep(COALESCE)

    def _due(self) -> float:
        """When the next pass is needed: now, a poll interval, a retry, or the next resync.

        Acknowledgements need only Kubernetes; everything else waits out a failed LIST's
        backoff.
        """
        now = self.services.clock()
        poll_s = self.settings.poll_interval
        poll = self.last_pass + poll_s
        # One LIST per poll interval serves every member in flight: the next is due a poll
        # interval after the last one began, however the writes in between were spread.
        listed = self.snapshot.started if self.snapshot is not None else float("-inf")
        due = self.last_full + self.settings.resync_interval
        records = self.engine.records
        # (a new generation's first look waits for its acknowledgement, scheduled below)
        if any(uid not in self._busy and uid not in self._queued
               and ((r := records.get(uid)) is None or r.deleting or r.acknowledged)
               for uid in self.fresh):
            due = now
        ack = float("inf")
        unseen: list[float] = []  # writes no LIST has been made after yet
        for uid in self.members:
            record = records.get(uid)
            if record is None:
                continue
            track = self.tracking.get(uid)
            if not record.deleting and not record.acknowledged and uid not in self._busy:
                ack = min(ack, poll if track is not None and track.owed else
                          self._ack_due(record, now))
                continue
            if record.deleting and not self.engine.is_released(uid):
                due = min(due, max(poll, listed + poll_s))
            elif track is not None and track.kind is not None:
                if track.submitted > listed:
                    unseen.append(track.submitted)
                else:
                    due = min(due, listed + poll_s)
            elif record.recorded.operation is not None:
                due = min(due, max(poll, listed + poll_s))
            if track is not None:
                if track.owed:
                    due = min(due, poll)
                if track.failures:
                    due = min(due, max(track.retry_at, poll))
        if unseen:
            # Writes sent close together are looked at together: one LIST a poll interval
            # after the last of those within half an interval of the first.
            unseen.sort()
            window = unseen[0] + poll_s / 2
            due = min(due, max(t for t in unseen if t <= window) + poll_s)
        return min(ack, max(due, self.list_retry_at))

    def _ack_due(self, record: Record, now: float) -> float:
        """When a new generation may be acknowledged: once kopf's finalizer is on the object.

        kopf adds its finalizer with a JSON patch that tests the resourceVersion; a status
        write landing first makes it fail (422) and be made again. Waiting for the finalizer
        (one watch event, milliseconds) spares both; FINALIZER_WAIT bounds the wait when
        the finalizer is slow to come.
        """
        if record.finalized:
            return now
        return self._joined.get(record.uid, now) + FINALIZER_WAIT

    def _look_due(self, record: Record, now: float) -> bool:
        """Whether this pass should decide for `record` (a resync pass decides for all)."""
        if record.uid in self.fresh or record.deleting:
            return True
        poll = self.settings.poll_interval
        listed = self.snapshot.started if self.snapshot is not None else float("-inf")
        track = self.tracking.get(record.uid)
        if track is not None:
            if track.owed or (track.failures and track.retry_at <= now):
                return True
            if track.kind is not None:
                return now >= max(track.submitted, listed) + poll - MIN_GAP
        return record.recorded.operation is not None and now >= listed + poll - MIN_GAP

    # -- one pass ------------------------------------------------------------------------------

    async def _pass(self) -> None:
        clock = self.services.clock
        now = self.last_pass = clock()
        records = self.engine.records
        members = [r for uid in list(self.members) if (r := records.get(uid)) is not None]
        # 1. New generations are acknowledged before anything is asked of ARM.
        unacked = [r for r in members if not r.deleting and not r.acknowledged
                   and r.uid not in self._busy and self._ack_due(r, now) <= now]
        if unacked:
            await self._each(unacked, self._acknowledge)
            members = [r for uid in list(self.members) if (r := records.get(uid)) is not None]
        # Deletions that need nothing from ARM (Orphan, observe-only, nothing recorded) go
        # ahead whatever ARM is doing, so a failing LIST never blocks them.
        self._enqueue([r for r in members if r.deleting and r.uid not in self._busy and
                       (r.orphan or r.observe_only or r.target() is None)])
        if now < self.list_retry_at:
            return  # a failed LIST is backing off; the work above needed no ARM
        full = now >= self.last_full + self.settings.resync_interval
        due = [r for r in members if (full or self._look_due(r, now))
               and (r.acknowledged or r.deleting) and r.uid not in self._busy]
        if not due:
            self.fresh.difference_update(r.uid for r in members if r.acknowledged)
            return
        # 2. One LIST for all of them, unless only new members need a look and the last
        #    LIST is recent enough to decide from.
        if self.workspace is not None:
            needs_list = full or self.snapshot is None or \
                any(r.uid not in self.fresh for r in due) or \
                now - self.snapshot.started > self.settings.observe_max_age
            if needs_list and not await self._list(due):
                return
            if full and self.snapshot is not None:
                self.last_full = self.snapshot.started
        # 3. Hand them to the workers, which decide with the newest record and act.
        self._enqueue(due)

    def _enqueue(self, records: Iterable[Record]) -> None:
        for record in records:
            self.fresh.discard(record.uid)
            if record.uid not in self._queued:
                self._queue.append(record.uid)
                self._queued.add(record.uid)
        self._spawn_workers()

    async def _each(self, records: Iterable[Record],
                    step: Callable[[Record], Awaitable[object]]) -> None:
        limit = asyncio.Semaphore(self.settings.loop_workers)

        async def bounded(record: Record) -> None:
            async with limit:
                await step(record)

        await asyncio.gather(*(bounded(r) for r in records))

    async def _list(self, due: list[Record]) -> bool:
        clock = self.services.clock
        try:
            await self._list_once()
        except ArmError as err:
            self.list_failures += 1
            failure = classify(err, "list")
            delay = self._backoff(self.list_failures, err, permanent=not err.retryable)
            self.list_retry_at = clock() + delay
            said = describe_failure(failure)
            if said != self._last_said or self.list_failures % 20 == 0:
                log.warning("workspace %s: listing computes failed: %s (next try in %.0fs; "
                            "%d failures in a row)", self.describe(), said, delay,
                            self.list_failures)
            self._last_said = said
            if isinstance(err, AuthenticationFailed):
                self.services.identities.refresh(self.key.identity)
            tell = due if err.retryable else [r for uid in list(self.members)
                                                if (r := self.engine.records.get(uid))]
            await self._each(tell, lambda r: self._report(r, failure))
            return False
        if self.list_failures:
            log.info("workspace %s: listing computes works again after %d failures",
                     self.describe(), self.list_failures)
        self.list_failures = 0
        self.list_retry_at = 0.0
        self._last_said = ""
        return True

    def _spawn_workers(self) -> None:
        while self._queue and len(self._workers) < self.settings.loop_workers:
            task = asyncio.create_task(self._work())
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    async def _work(self) -> None:
        clock = self.services.clock
        gauge = metrics.active_workers.labels(metrics.CONTROLLER)
        while self._queue:
            uid = self._queue.popleft()
            self._queued.discard(uid)
            if uid not in self.members or uid in self._busy:
                continue
            await self.services.gate.wait()
            self._busy.add(uid)
            gauge.inc()
            began = clock()
            try:
                result = await self._step(uid)
            except Exception:
                record = self.engine.records.get(uid)
                log.exception("workspace %s: step for %s failed", self.describe(),
                              f"{record.namespace}/{record.name}" if record else uid,
                              extra=_context(record) if record else None)
                result = "error"
            finally:
                self._busy.discard(uid)
                gauge.dec()
                if uid in self.fresh:
                    self.wake()  # it changed while we were busy with it
                elif (track := self.tracking.get(uid)) is not None and track.pending:
                    self._retime()
            if result is not None:  # None: the resource was gone, nothing was reconciled
                metrics.reconcile_time.labels(metrics.CONTROLLER).observe(clock() - began)
                metrics.reconcile_total.labels(metrics.CONTROLLER, result).inc()
                if result == "error":
                    metrics.reconcile_errors.labels(metrics.CONTROLLER).inc()
        if self.snapshot is not None and not self._queue and not self._busy and self._idle():
            self.snapshot = None  # nothing to decide before the next resync: let it go

    def _idle(self) -> bool:
        """Nothing in flight, owed, retrying, new or being deleted among the members."""
        if self.fresh or any(t.pending for t in self.tracking.values()):
            return False
        records = self.engine.records
        return not any(r.deleting or r.recorded.operation is not None or not r.acknowledged
                       for uid in self.members if (r := records.get(uid)) is not None)

    # -- one member ----------------------------------------------------------------------------

    async def _step(self, uid: str) -> str | None:
        record = self.engine.records.get(uid)
        if record is None:
            return None
        if record.deleting:
            return await self._detach(record)
        if not record.acknowledged:
            await self._acknowledge(record)
            self.wake(uid)
            return "requeue"
        spec = record.valid
        if spec is None or self.workspace is None:
            return "success"
        snap, track = self.snapshot, self.tracking.get(uid)
        if snap is None or (track is not None and track.submitted > snap.started):
            return "requeue"  # the LIST predates our own last write: look next pass
        self.engine.verified.add(uid)
        situation = self._situation(record, Observed(snap.get(spec.compute_name)))
        return await self._carry_out(record, situation, decide_attach(situation), False)

    def _situation(self, record: Record, observed: Observed) -> Situation:
        track = self.tracking.get(record.uid)
        recorded_op = record.recorded.operation
        return Situation(
            spec=record.valid,
            owner=record.owner,
            recorded=record.recorded,
            observed=observed,
            retry_due=track is None or not track.failures or
            self.services.clock() >= track.retry_at,
            has_operation_url=track is not None and track.url is not None and
            recorded_op is not None and track.kind == recorded_op.kind,
            live_uids=self.engine.records,
            observe_only=record.observe_only,
        )

    async def _acknowledge(self, record: Record) -> None:
        spec = record.valid
        denial = self.settings.workspace_policy.denial(record.namespace, spec.workspace) \
            if spec is not None else None
        decision = acknowledge(record.spec, record.recorded, requested_name=record.requested_name,
                               denial=denial, observe_only=record.observe_only)
        track = self.tracking.get(record.uid)
        if track is not None:
            track.failures = 0  # a new generation starts without the old one's backoff
            track.retry_at = 0.0
        await self._settle(record, decision)

    async def _detach(self, record: Record) -> str | None:
        if self.engine.is_released(record.uid):
            return None
        target = record.target()
        view = None
        if target is not None and self.workspace is not None and \
                not record.orphan and not record.observe_only:
            snap, track = self.snapshot, self.tracking.get(record.uid)
            if snap is None or (track is not None and track.submitted > snap.started):
                return "requeue"
            view = snap.get(target[1])
        situation = self._situation(record, Observed(view))
        decision = decide_detach(target, situation, orphan=record.orphan)
        return await self._carry_out(record, situation, decision, True)

    async def _carry_out(self, record: Record, situation: Situation, decision: Decision,
                         detaching: bool, *, reread: bool = True) -> str:
        """Act on one decision: write status first, then ARM, then post the events."""
        uid = record.uid
        try:
            if decision.action is Action.CHECK_OPERATION:
                track = self.tracking.get(uid)
                url = track.url if track is not None else None
                result = await self.services.api.operation(
                    url, self._subscription(record), await self._auth()) if url else None
                situation = replace(situation, observed=Observed(
                    situation.observed.compute, result, operation_checked=True))
                decision = self._decide(record, situation, detaching)
                if decision.action is Action.CHECK_OPERATION:
                    decision = WAIT
            if decision.action is Action.PUT:
                return await self._put(record, situation, decision, reread=reread)
            if decision.action is Action.DELETE:
                return await self._delete(record, situation, decision)
            if decision.action is Action.RELEASE:
                self._post(record, decision.events)
                self._forget_tracking(uid)
                self.engine.released(uid)
                return "success"
            return await self._settle(record, decision)
        except ArmError as err:
            failure = classify(err, "operation" if decision.action is Action.CHECK_OPERATION
                               else "compute")
            if isinstance(err, AuthenticationFailed):
                self.services.identities.refresh(self.key.identity)
            log.warning("%s/%s: %s", record.namespace, record.name, describe_failure(failure),
                        extra=_context(record))
            await self._report(record, failure, err)
            return "error"

    def _decide(self, record: Record, situation: Situation, detaching: bool) -> Decision:
        if detaching:
            return decide_detach(record.target(), situation, orphan=record.orphan)
        return decide_attach(situation)

    async def _put(self, record: Record, situation: Situation, decision: Decision, *,
                   reread: bool) -> str:
        spec = situation.spec
        assert spec is not None and self.workspace is not None
        if not record.finalized:
            return "requeue"  # kopf's finalizer first: nothing may be attached unguarded
        prepaid = False
        if decision.put is PutKind.CREATE:
            holder = self.engine.claim(spec.workspace, spec.compute_name, record)
            if holder is not None:
                return await self._settle(record, claimed(spec, f"{holder.namespace}/"
                                                                f"{holder.name}"))
            if reread:
                # Wait for our turn first, then look again: another operator (or a script)
                # may have taken the name since the LIST this decision came from.
                auth = await self._auth()
                await self.services.api.reserve_write(spec.workspace, auth)
                prepaid = True
                view, looked = await self._fresh_view(spec, auth)
                if looked and view is not None:
                    situation = replace(situation, observed=Observed(view))
                    return await self._carry_out(record, situation, decide_attach(situation),
                                                 False, reread=False)
        written = await self._write(record, decision)
        if written is None:
            return "error"
        auth = await self._auth()
        location = await self.services.api.location(spec.workspace, auth)
        sent = await self.services.api.put_compute(
            spec, location, {**spec.tags, **record.owner.tags()}, auth, prepaid=prepaid)
        self._sent(record.uid, "Attach", sent.url, decision.failed)
        self._post(written, decision.events)
        if any(e.reason == "Drifted" for e in decision.events):
            metrics.drift_repairs.inc()
        return "requeue"

    async def _fresh_view(self, spec: AttachmentSpec, auth: TokenGetter | None
                          ) -> tuple[ComputeView | None, bool]:
        """The compute as ARM has it now; (None, False) when no read could be spared.

        A small workspace is LISTed again unless its last LIST began within
        BCO_OBSERVE_MAX_AGE (one LIST serves every attach waiting in it); a large one is asked
        for this one compute.
        """
        api = self.services.api
        if api.last_pages.get(spec.workspace.key, 1) <= 2:
            snap = await self._refresh(self.settings.observe_max_age)
            return snap.get(spec.compute_name), True
        if api.can_spare_read(spec.workspace, auth):
            view = await api.get_compute(spec.workspace, spec.compute_name, auth)
            if view is not None and self.snapshot is not None:
                self.snapshot.computes[view.name.lower()] = view
            return view, True
        return None, False

    async def _refresh(self, max_age: float) -> Snapshot:
        """A snapshot begun at most `max_age` ago; concurrent callers share one LIST."""
        now = self.services.clock()
        if self.snapshot is not None and self.snapshot.started >= now - max_age:
            return self.snapshot
        task = self._refreshing
        if task is None or (task.done() and self._refresh_began < now - max_age):
            self._refresh_began = now
            task = self._refreshing = asyncio.create_task(self._list_once())
        return await asyncio.shield(task)

    async def _list_once(self) -> Snapshot:
        assert self.workspace is not None
        started = self.services.clock()
        computes = await self.services.api.list_computes(self.workspace, await self._auth())
        snap = Snapshot(started, computes)
        if self.snapshot is None or self.snapshot.started <= started:
            self.snapshot = snap
        return snap

    async def _delete(self, record: Record, situation: Situation, decision: Decision) -> str:
        target = record.target()
        assert target is not None
        written = await self._write(record, decision)
        if written is None:
            return "error"
        try:
            sent = await self.services.api.delete_compute(*target, await self._auth())
        except ArmError as err:
            if not err.retryable and written is not record:
                # A permanent failure is retried quietly: the status already says Detaching,
                # and this is its only chance to be told. A transient one is decided again,
                # and its retry posts the event.
                self._post(written, decision.events)
            raise
        self._sent(record.uid, "Detach", sent.url, decision.failed)
        self._post(written, decision.events)
        return "requeue"

    # -- writing -------------------------------------------------------------------------------

    async def _settle(self, record: Record, decision: Decision) -> str:
        """Write the decision's status (only what changed) and, if written, its events."""
        written = await self._write(record, decision, events_follow=True)
        if written is None:
            return "error"
        wrote = written is not record
        self._post_written(record, written, decision)
        track = self.tracking.get(record.uid)
        if decision.failed and track is not None and track.kind is not None:
            # The operation this process sent has ended (badly): never ask it again.
            metrics.operations_in_flight.labels(track.kind).dec()
            track.kind, track.url = None, None
        if decision.failed and wrote:
            self._fail(record.uid, permanent=True)
        elif written.recorded.is_true("Ready", written.generation) and track is not None:
            track.failures = 0
        if track is not None and written.recorded.operation is None and track.kind is not None:
            metrics.operations_in_flight.labels(track.kind).dec()
            track.kind, track.url = None, None
        self._tidy(record.uid)
        if decision.failed:
            return "requeue_after"
        return "requeue" if written.recorded.operation is not None else "success"

    async def _write(self, record: Record, decision: Decision, *,
                     events_follow: bool = False) -> Record | None:
        """The record after the write (the same object when nothing needed writing).

        `events_follow`: the caller posts the decision's events only if this writes something;
        when the write fails they are kept, in case the API server applied it anyway.
        """
        now = utcnow()
        desired = record.recorded.updated(decision.status, decision.conditions,
                                          record.generation, now)
        patch = record.recorded.patch_to(desired)
        track = self.tracking.get(record.uid)
        if not patch:
            if track is not None:
                track.owed = False
            return record
        patch["lastSyncTime"] = now
        try:
            # A generation's first status goes ahead of other writes: until it lands, the
            # object has none, and reads as healthy to GitOps tools.
            body = await self.services.kube.patch_status(
                record.path, record.uid, patch,
                priority=STATUS if record.acknowledged else FIRST_STATUS)
        except KubeError as err:
            failed = self._track(record.uid)
            failed.owed = True
            if events_follow and decision.events:
                failed.unanswered = (desired, tuple(decision.events))
            log.warning("%s/%s: status not written (%s); trying again next pass",
                        record.namespace, record.name, err, extra=_context(record))
            return None
        if body is None:  # gone, or replaced by a new object of the same name
            self.engine.forget(record.uid)
            return None
        log.debug("%s/%s: wrote status %s", record.namespace, record.name,
                  json.dumps(patch, sort_keys=True), extra=_context(record))
        if track is not None:
            track.owed = False
            track.unanswered = None
        return self.engine.written(body) or record

    def _post_written(self, record: Record, written: Record, decision: Decision) -> None:
        """After `_write(..., events_follow=True)`: the decision's events if it wrote the
        status, else those of an earlier write that seemed to fail but landed."""
        self._post(written, decision.events if written is not record else self._landed(written))

    def _landed(self, record: Record) -> tuple[Event, ...]:
        """The events of an earlier write that seemed to fail, if `record` shows it landed."""
        track = self.tracking.get(record.uid)
        if track is None or track.unanswered is None:
            return ()
        desired, events = track.unanswered
        track.unanswered = None
        return () if record.recorded.patch_to(desired) else events

    def _post(self, record: Record, events: Iterable[Event]) -> None:
        """Post each event, and log it: at the default level, these are the lines per resource."""
        obj = InvolvedObject(API_VERSION, KIND, record.namespace, record.name, record.uid)
        for event in events:
            self.services.events.post(obj, event.type, event.reason, event.message)
            log.log(logging.WARNING if event.type == "Warning" else logging.INFO,
                    "%s/%s: %s: %s", record.namespace, record.name, event.reason, event.message,
                    extra={**_context(record), "reason": event.reason})

    async def _report(self, record: Record, failure: Failure, err: ArmError | None = None
                      ) -> None:
        situation = self._situation(record, Observed(None))
        decision = decide_failure(failure, situation, detaching=record.deleting)
        written = await self._write(record, decision, events_follow=True)
        if written is None:
            return
        self._post_written(record, written, decision)
        if err is not None:
            self._fail(record.uid, permanent=not err.retryable, retry_after=err.retry_after)

    # -- tracking ------------------------------------------------------------------------------

    def _track(self, uid: str) -> Tracking:
        track = self.tracking.get(uid)
        if track is None:
            track = self.tracking[uid] = Tracking()
        return track

    def _tidy(self, uid: str) -> None:
        track = self.tracking.get(uid)
        if track is not None and track.kind is None and not track.failures and not track.owed:
            del self.tracking[uid]

    def _forget_tracking(self, uid: str) -> None:
        track = self.tracking.pop(uid, None)
        if track is not None and track.kind is not None:
            metrics.operations_in_flight.labels(track.kind).dec()

    def _sent(self, uid: str, kind: str, url: str | None, retrying: bool) -> None:
        track = self._track(uid)
        if track.kind is None:
            metrics.operations_in_flight.labels(kind).inc()
        elif track.kind != kind:
            metrics.operations_in_flight.labels(track.kind).dec()
            metrics.operations_in_flight.labels(kind).inc()
        track.kind, track.url, track.submitted = kind, url, self.services.clock()
        if retrying:
            self._fail(uid, permanent=True)

    def _fail(self, uid: str, *, permanent: bool, retry_after: float | None = None) -> None:
        track = self._track(uid)
        track.failures += 1
        track.retry_at = self.services.clock() + self._backoff(
            track.failures, None, permanent=permanent, retry_after=retry_after)

    def _backoff(self, failures: int, err: ArmError | None, *, permanent: bool,
                 retry_after: float | None = None) -> float:
        s = self.settings
        low, high = (s.failure_retry_min, s.failure_retry_max) if permanent else \
            (s.retry_min, s.retry_max)
        delay: float = min(high, low * 2 ** min(failures - 1, 20)) * random.uniform(0.8, 1.2)
        floor = retry_after if retry_after is not None else \
            (err.retry_after if err is not None else None)
        return max(delay, floor or 0.0)

    # -- identity ------------------------------------------------------------------------------

    async def _auth(self) -> TokenGetter | None:
        return await self.services.identities.get(self.key.identity)

    def _subscription(self, record: Record) -> str:
        target = record.target()
        return target[0].subscription_id if target is not None else ""


def classify(err: ArmError, target: str) -> Failure:
    """An exception from the ARM side, as the decision layer needs it."""
    if isinstance(err, CredentialsUnavailable):
        return Failure(err.code, err.message, err.retryable, source="identity",
                       target="credentials")
    origin = getattr(err, "origin", "ARM")
    return Failure(err.code or f"HTTP{err.status}", err.message, err.retryable,
                   throttled=err.throttled, source=str(origin), target=target)


def describe_failure(failure: Failure) -> str:
    if failure.target == "credentials":
        return f"no usable credentials: {failure.message}"
    if failure.source == "ARM":
        if failure.code in ("Timeout", "ConnectionError"):
            return f"no answer from ARM: {failure.message}"
        return f"ARM answered {failure.code}: {failure.message}"
    return f"{failure.source} failed: {failure.message}"


def _context(record: Record) -> dict[str, dict[str, str]]:
    spec = record.valid
    return resource(record.namespace, record.name, record.uid,
                    spec.workspace.name if spec is not None else None,
                    spec.compute_name if spec is not None else None)
