"""Long-running operations: they run on their own timers, not when a client polls them."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .arm import error_body, iso_from_epoch, operation_path, parse_batch_account_id, utc_now_iso
from .config import EmulatorConfig
from .state import BatchAccount, Compute, Store

TERMINAL = frozenset({"Succeeded", "Failed", "Canceled"})
MAX_OPERATIONS = 20_000


@dataclass(frozen=True)
class ForcedOutcome:
    """What a fault makes an operation end with instead of its natural result."""

    status: str  # Failed | Canceled
    code: str
    message: str


@dataclass
class Operation:
    id: str
    subscription: str
    location: str
    action: str  # attach | detach
    compute_key: tuple[str, ...]
    duration: float
    forced: ForcedOutcome | None = None
    previous_state: str = "Succeeded"  # restored when a detach is canceled
    status: str = "InProgress"
    start_time: float = field(default_factory=time.time)
    end_time: float | None = None
    error: dict[str, str] | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def path(self, kind: str) -> str:
        return operation_path(self.subscription, self.location, kind, self.id)

    def to_json(self, error_style: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.path("computeOperationsStatus"),
            "name": self.id,
            "status": self.status,
            "startTime": iso_from_epoch(self.start_time),
        }
        if self.end_time is not None:
            body["endTime"] = iso_from_epoch(self.end_time)
        if self.error is not None:
            body["error"] = (
                {"error": dict(self.error)} if error_style == "nested" else dict(self.error)
            )
        return body


class OperationRunner:
    """Creates operations and completes them after `operation_seconds`."""

    def __init__(self, store: Store, config: EmulatorConfig) -> None:
        self.store = store
        self.config = config
        self.operations: dict[str, Operation] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self, compute: Compute, location: str, action: str, forced: ForcedOutcome | None
    ) -> Operation:
        op = Operation(
            id=str(uuid.uuid4()),
            subscription=compute.subscription,
            location=location,
            action=action,
            compute_key=compute.key,
            duration=self.config.operation_seconds,
            forced=forced,
        )
        self.operations[op.id] = op
        self._prune()
        op.previous_state = str(compute.properties.get("provisioningState") or "Succeeded")
        compute.operation_id = op.id
        task = asyncio.get_running_loop().create_task(self._run(op))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return op

    def find(self, subscription: str, location: str, op_id: str) -> Operation | None:
        op = self.operations.get(op_id.lower())
        if op is None or op.subscription.lower() != subscription.lower():
            return None
        return op if op.location == location.replace(" ", "").lower() else None

    def _prune(self) -> None:
        """Forget the oldest finished operations so long benchmark runs stay bounded."""
        excess = len(self.operations) - MAX_OPERATIONS
        if excess <= 0:
            return
        for op_id in [k for k, op in self.operations.items() if op.done][:excess]:
            del self.operations[op_id]

    async def _run(self, op: Operation) -> None:
        await asyncio.sleep(op.duration)
        self.finish(op)

    def finish(self, op: Operation) -> None:
        """Apply the operation's result to its compute and mark it terminal."""
        if op.done:
            return
        compute = self.store.computes.get(op.compute_key)
        if compute is not None and compute.operation_id != op.id:
            compute = None  # replaced out of band: leave the newer object alone
        if op.action == "attach":
            status, error = self._attach_result(op, compute)
        else:
            status, error = self._detach_result(op, compute)
        if compute is not None:
            compute.operation_id = None
            compute.properties["modifiedOn"] = utc_now_iso()
        op.status, op.error, op.end_time = status, error, time.time()

    def _attach_result(
        self, op: Operation, compute: Compute | None
    ) -> tuple[str, dict[str, str] | None]:
        if op.forced is not None:
            status, error = op.forced.status, error_body(op.forced.code, op.forced.message)["error"]
        else:
            status, error = self._natural_attach(compute)
        if compute is not None:
            props = compute.properties
            props["provisioningState"] = status
            props["provisioningErrors"] = (
                [{"error": dict(error)}] if error and status == "Failed" else None
            )
            if status == "Succeeded":
                account = self._account(compute)
                props["computeLocation"] = account.location if account else None
                props["isAttachedCompute"] = True
        return status, error

    def _natural_attach(self, compute: Compute | None) -> tuple[str, dict[str, str] | None]:
        if compute is None:
            return "Succeeded", None
        resource_id = str(compute.properties.get("resourceId") or "")
        ref = parse_batch_account_id(resource_id)
        if ref is not None and self.store.batch_account(ref) is not None:
            return "Succeeded", None
        name = ref.name if ref else resource_id
        group = ref.resource_group if ref else "unknown"
        return "Failed", {
            "code": "ResourceNotFound",
            "message": f"The Resource 'Microsoft.Batch/batchAccounts/{name}' under resource group "
            f"'{group}' was not found. For more details please go to "
            "https://aka.ms/ARMResourceNotFoundFix",
        }

    def _account(self, compute: Compute) -> BatchAccount | None:
        ref = parse_batch_account_id(str(compute.properties.get("resourceId") or ""))
        return self.store.batch_account(ref) if ref else None

    def _detach_result(
        self, op: Operation, compute: Compute | None
    ) -> tuple[str, dict[str, str] | None]:
        if op.forced is None:
            if compute is not None:
                self.store.remove_compute(compute.key)
            return "Succeeded", None
        error = error_body(op.forced.code, op.forced.message)["error"]
        if compute is not None:
            props = compute.properties
            if op.forced.status == "Failed":
                props["provisioningState"] = "Failed"
                props["provisioningErrors"] = [{"error": dict(error)}]
            else:
                props["provisioningState"] = op.previous_state
        return op.forced.status, error

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def clear(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.operations.clear()

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {
                **op.to_json(self.config.operation_error_style),
                "action": op.action,
                "compute": "/".join(op.compute_key),
            }
            for op in self.operations.values()
        ]
