"""Carries out reconcile decisions against ARM and turns them into status and events.

This is the only place that combines observation, decision and action for one resource.
It knows nothing of kopf: handlers hand it a plain view of the resource and apply the
`Outcome` (a status patch holding only what changed, and events) themselves.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from batchcompute_operator import conditions as cond
from batchcompute_operator.config import Settings
from batchcompute_operator.credentials import CredentialsUnavailable, NamespaceIdentities
from batchcompute_operator.reconcile import (
    Action,
    Decision,
    Event,
    Observed,
    Owner,
    decide_attach,
    decide_detach,
)
from batchcompute_operator.spec import (
    COMPUTE_NAME,
    AttachmentSpec,
    SpecError,
    WorkspaceRef,
    parse_spec,
)
from batchcompute_operator.workspace.api import WorkspaceApi
from batchcompute_operator.workspace.client import TokenGetter
from batchcompute_operator.workspace.errors import ArmError, AuthenticationFailed
from batchcompute_operator.workspace.observer import WorkspaceObserver

log = logging.getLogger(__name__)


WRITE_LAG_LIMIT = 30.0  # seconds after which an unseen status write is presumed lost


class Trigger(enum.Enum):
    CHANGE = "change"  # created, spec updated, or found at start-up
    POLL = "poll"  # an operation or a retry is pending
    RESYNC = "resync"  # periodic re-verification of a settled resource


@dataclass(frozen=True)
class ResourceView:
    namespace: str
    name: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any]

    @property
    def owner(self) -> Owner:
        return Owner(self.namespace, self.name, self.uid, self.generation)


@dataclass
class Outcome:
    status_patch: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    done: bool = True  # for deletion: the finalizer may go
    retry_in: float | None = None


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_patch(current: Mapping[str, Any], decision: Decision, generation: int,
                 now: str) -> dict[str, Any]:
    """Only the status fields that differ from what is stored; empty when nothing changed."""
    desired = dict(decision.status)
    if decision.conditions:
        desired["conditions"] = cond.merge(current.get("conditions"), decision.conditions,
                                           generation, now)
        desired["observedGeneration"] = generation
    patch = {k: v for k, v in desired.items() if current.get(k) != v}
    if patch:
        patch["lastSyncTime"] = now
    return patch


def parse_compute_id(compute_id: str) -> tuple[WorkspaceRef, str] | None:
    """Our own recorded id, re-validated before it is used in a URL again."""
    parts = compute_id.split("/")
    if len(parts) != 11 or parts[0] or parts[6].lower() != "microsoft.machinelearningservices":
        return None
    try:
        ref = parse_spec({"workspace": {"subscriptionId": parts[2], "resourceGroup": parts[4],
                                         "name": parts[8]},
                           "computeName": parts[10],
                           "batchAccount": {"resourceGroup": "placeholder",
                                            "accountName": "placeholder"}}, parts[10])
    except SpecError:
        return None
    if not COMPUTE_NAME.fullmatch(parts[10]):
        return None
    return ref.workspace, ref.compute_name


class AttachmentService:
    def __init__(self, settings: Settings, api: WorkspaceApi, observer: WorkspaceObserver,
                 identities: NamespaceIdentities | None = None,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.identities = identities
        self.api = api
        self.observer = observer
        self._clock = clock
        self._started = clock()
        self._locks: dict[str, asyncio.Lock] = {}
        self._submitted: dict[str, float] = {}  # uid -> monotonic time of the last PUT/DELETE
        self._retry: dict[str, tuple[float, int]] = {}  # uid -> (due, consecutive failures)
        # Status this process wrote that the watch stream may not have delivered back yet,
        # with when it was written.
        self._written: dict[str, tuple[float, dict[str, Any]]] = {}

    # -- attach side -------------------------------------------------------------------------

    def due(self, uid: str) -> bool:
        entry = self._retry.get(uid)
        return entry is None or self._clock() >= entry[0]

    async def reconcile(self, res: ResourceView, trigger: Trigger) -> Outcome:
        lock = self._locks.setdefault(res.uid, asyncio.Lock())
        if trigger is not Trigger.CHANGE and lock.locked():
            # Another handler is acting on this resource right now (e.g. a create waiting for
            # its turn to write); a timer tick would only act on a body that is about to be
            # outdated. The next tick looks again.
            return Outcome()
        async with lock:
            if trigger is Trigger.POLL and not self.due(res.uid):
                return Outcome()
            res = self._with_own_writes(res)
            try:
                spec: AttachmentSpec | SpecError = parse_spec(res.spec, res.name, res.namespace)
            except SpecError as err:
                spec = err
            if isinstance(spec, SpecError):
                decision = decide_attach(spec, res.owner, res.status, Observed(None))
                return self._outcome(res, decision)
            denial = self.settings.workspace_policy.denial(res.namespace, spec.workspace)
            if denial is not None:
                return self._outcome(res, Decision(
                    Action.NONE, {"provisioningErrors": [{"code": "WorkspaceNotAllowed",
                                                          "message": denial}]},
                    cond.stalled("WorkspaceNotAllowed", denial),
                    [Event("Warning", "WorkspaceNotAllowed", denial)]))
            try:
                outcome = await self._attach_step(res, spec, trigger)
            except ArmError as err:
                return self._arm_failure(res, err)
            self._retry.pop(res.uid, None)
            return outcome

    def _not_before(self, uid: str, trigger: Trigger) -> float:
        now = self._clock()
        if trigger is Trigger.RESYNC:
            # Resync windows are aligned, so every resource of a workspace that ticks within
            # one interval shares that interval's single LIST.
            interval = self.settings.resync_interval
            floor = (now // interval) * interval
        elif trigger is Trigger.POLL:
            floor = now - 0.5 * self.settings.poll_interval
        else:
            floor = now - self.settings.observe_max_age
        return max(floor, self._submitted.get(uid, self._started))

    async def _auth(self, namespace: str, spec: AttachmentSpec | None) -> TokenGetter | None:
        """The namespace's own identity when its spec names one; None: the operator's."""
        if spec is None or spec.credentials_secret is None:
            return None
        if self.identities is None:
            raise CredentialsUnavailable("per-namespace credentials are not enabled",
                                         retryable=False)
        return await self.identities.get(namespace, spec.credentials_secret)

    async def _observe(self, res: ResourceView, ws: WorkspaceRef, name: str,
                       trigger: Trigger, auth: TokenGetter | None) -> Observed:
        snap = await self.observer.snapshot(ws, self._not_before(res.uid, trigger), auth)
        return Observed(snap.get(name))

    async def _check_operation(self, status: Mapping[str, Any], observed: Observed,
                               subscription: str, auth: TokenGetter | None) -> Observed:
        """Ask ARM about the operation recorded in `status`, for what the LIST cannot tell."""
        op = status.get("operation")
        url = op.get("url") if isinstance(op, Mapping) else None
        result = await self.api.operation(url, subscription, auth) \
            if isinstance(url, str) and url else None
        return Observed(observed.compute, result, operation_checked=True)

    async def _attach_step(self, res: ResourceView, spec: AttachmentSpec,
                           trigger: Trigger) -> Outcome:
        auth = await self._auth(res.namespace, spec)
        observed = await self._observe(res, spec.workspace, spec.compute_name, trigger, auth)
        resync = trigger is Trigger.RESYNC
        decision = decide_attach(spec, res.owner, res.status, observed, resync=resync)
        if decision.action is Action.CHECK_OPERATION:
            observed = await self._check_operation(res.status, observed,
                                                   spec.workspace.subscription_id, auth)
            decision = decide_attach(spec, res.owner, res.status, observed, resync=resync)
        if decision.action is Action.PUT:
            location = await self.api.location(spec.workspace, auth)
            sent = await self.api.put_compute(spec, location, {**spec.tags, **res.owner.tags()},
                                              auth)
            # Only a LIST sent after ARM answered the PUT is sure to show its effect.
            self._submitted[res.uid] = self._clock()
            decision.status["operation"] = self._operation("Attach", sent.url)
        elif decision.action is Action.DELETE:
            sent = await self.api.delete_compute(spec.workspace, spec.compute_name, auth)
            self._submitted[res.uid] = self._clock()
            decision.status["operation"] = self._operation("Detach", sent.url)
        return self._outcome(res, decision)

    @staticmethod
    def _operation(kind: str, url: str | None) -> dict[str, Any]:
        return {"kind": kind, "url": url, "since": utcnow()}

    def _with_own_writes(self, res: ResourceView) -> ResourceView:
        """The resource as of our own last status write.

        Under load the watch stream lags: a timer can tick again before the body it is handed
        shows the patch its previous tick made. Deciding from that stale body would repeat the
        transition (a second write, a second event); our own writes are known, so overlay them.
        """
        entry = self._written.get(res.uid)
        if entry is None:
            return res
        at, written = entry
        caught_up = all(res.status.get(k) == v for k, v in written.items() if k != "lastSyncTime")
        if caught_up or self._clock() - at > WRITE_LAG_LIMIT:
            # Caught up; or so late that the write was probably lost: trust the body again.
            del self._written[res.uid]
            return res
        status = {**res.status, **written}
        return replace(res, status={k: v for k, v in status.items() if v is not None})

    def _outcome(self, res: ResourceView, decision: Decision) -> Outcome:
        patch = status_patch(res.status, decision, res.generation, utcnow())
        if patch:
            _, earlier = self._written.get(res.uid, (0.0, {}))
            self._written[res.uid] = (self._clock(), {**earlier, **patch})
        events = decision.events if patch or decision.action in (Action.PUT, Action.DELETE) \
            else []
        return Outcome(patch, events)

    def _backoff(self, uid: str, err: ArmError) -> float:
        _, failures = self._retry.get(uid, (0.0, 0))
        failures += 1
        delay = min(self.settings.retry_max, self.settings.retry_min * 2 ** (failures - 1))
        delay = max(float(delay * random.uniform(0.8, 1.2)), err.retry_after or 0.0)
        self._retry[uid] = (self._clock() + delay, failures)
        return delay

    def _arm_failure(self, res: ResourceView, err: ArmError) -> Outcome:
        delay = self._backoff(res.uid, err)
        message = f"{err.code}: {err.message}"
        log.warning("%s/%s: ARM said %s (retry in %.0fs)", res.namespace, res.name, message, delay)
        if isinstance(err, CredentialsUnavailable):
            reason = "CredentialsUnavailable"
        elif err.throttled:
            reason = "Throttled"
        elif isinstance(err, AuthenticationFailed):
            reason = "AuthenticationFailed"
        else:
            reason = "Retrying"
        if err.retryable:
            ready = cond.get(res.status.get("conditions"), "Ready") or {}
            if ready.get("status") == "True" and \
                    ready.get("observedGeneration") == res.generation:
                # A settled attachment stays Ready while ARM is briefly unavailable.
                conditions = [cond.Condition("Ready", "True", str(ready.get("reason", "Attached")),
                                             str(ready.get("message", ""))),
                              cond.Condition("Reconciling", "True", reason, message),
                              cond.Condition("Stalled", "False", reason, message)]
            else:
                conditions = cond.progressing(reason, message)
            decision = Decision(Action.WAIT, {}, conditions,
                                [Event("Warning", reason, message)])
        else:
            stalled_reason = reason if reason == "CredentialsUnavailable" else "AttachFailed"
            decision = Decision(Action.NONE, {"provisioningErrors": [
                {"code": err.code, "message": err.message}]},
                cond.stalled(stalled_reason, message),
                [Event("Warning", stalled_reason, message)])
        outcome = self._outcome(res, decision)
        outcome.retry_in = delay
        return outcome

    # -- detach side -------------------------------------------------------------------------

    async def detach(self, res: ResourceView) -> Outcome:
        """Detach what this resource owns, waiting on the shared observer up to `detach_wait`."""
        lock = self._locks.setdefault(res.uid, asyncio.Lock())
        async with lock:
            outcome = await self._detach(res)
        if outcome.done:
            self.forget(res.uid)
        return outcome

    def _target(self, res: ResourceView) -> tuple[tuple[WorkspaceRef, str] | None,
                                                  AttachmentSpec | None]:
        """What to detach (the recorded compute first), and the spec for its identity."""
        try:
            spec: AttachmentSpec | None = parse_spec(res.spec, res.name, res.namespace)
        except SpecError:
            spec = None
        recorded = res.status.get("computeId")
        if isinstance(recorded, str) and recorded:
            return parse_compute_id(recorded), spec
        return ((spec.workspace, spec.compute_name) if spec else None), spec

    async def _detach(self, res: ResourceView) -> Outcome:
        policy = res.spec.get("deletionPolicy", "Detach")
        target, spec = self._target(res)
        status = dict(res.status)
        events: list[Event] = []
        deadline = self._clock() + self.settings.detach_wait
        trigger = Trigger.CHANGE
        try:
            auth = await self._auth(res.namespace, spec) if policy != "Orphan" else None
            while True:
                observed = Observed(None)
                if target is not None and policy != "Orphan":
                    observed = await self._observe(res, *target, trigger, auth)
                target_id = target[0].compute_id(target[1]) if target else None
                decision = decide_detach(target_id, str(policy), res.owner, status, observed)
                if decision.action is Action.CHECK_OPERATION and target is not None:
                    observed = await self._check_operation(
                        status, observed, target[0].subscription_id, auth)
                    decision = decide_detach(target_id, str(policy), res.owner, status, observed)
                events += decision.events
                if decision.action is Action.RELEASE:
                    return Outcome(self._diff(res.status, status), events, done=True)
                if decision.action is Action.DELETE and target is not None:
                    sent = await self.api.delete_compute(*target, auth)
                    self._submitted[res.uid] = self._clock()
                    decision.status["operation"] = self._operation("Detach", sent.url)
                status.update(status_patch(status, decision, res.generation, utcnow()))
                if decision.action is Action.NONE:  # the detach failed: retry later
                    delay = self._backoff(res.uid, ArmError(0, "", "", retryable=True))
                    return Outcome(self._diff(res.status, status), events, False, delay)
                if self._clock() >= deadline:
                    return Outcome(self._diff(res.status, status), events, False,
                                   self.settings.poll_interval)
                trigger = Trigger.POLL
                await asyncio.sleep(self.settings.poll_interval)
        except ArmError as err:
            failure = self._arm_failure(res, err)
            status.update(failure.status_patch)
            return Outcome(self._diff(res.status, status), events + failure.events, False,
                           failure.retry_in)

    @staticmethod
    def _diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in after.items() if before.get(k) != v}

    def forget(self, uid: str) -> None:
        self._written.pop(uid, None)
        self._locks.pop(uid, None)
        self._submitted.pop(uid, None)
        self._retry.pop(uid, None)
