"""Every state of the attachments in one namespace, as a Kubernetes watch stream delivers it.

`StatusWatch` lists the namespace once for a resourceVersion, then watches from there in a
thread (the kubernetes client's `Watch`, i.e. `?watch=true`), so it sees a resource's very
first ADDED event and every MODIFIED event after it: exactly what Argo CD's and Flux's
informers are handed. Each event is kept with the wall-clock time it arrived, which is the
clock the ARM emulator stamps its request log with.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import watch
from kubernetes.client import ApiClient, CustomObjectsApi
from operator_proc import GROUP, PLURAL, VERSION

# Each watch request ends after this many seconds and the next one resumes from the last
# resourceVersion seen, so `stop` returns within about this long and no event is lost.
WATCH_SECONDS = 1


@dataclass(frozen=True)
class Seen:
    """One event of the watch stream."""

    at: float  # time.time() when the event arrived
    type: str  # ADDED, MODIFIED or DELETED
    obj: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def generation(self) -> int:
        return int(self.obj["metadata"]["generation"])

    @property
    def resource_version(self) -> int:
        return int(self.obj["metadata"]["resourceVersion"])

    @property
    def deleting(self) -> bool:
        return self.obj["metadata"].get("deletionTimestamp") is not None

    @property
    def status(self) -> dict[str, Any]:
        status = self.obj.get("status")
        return status if isinstance(status, dict) else {}

    @property
    def operator_status(self) -> dict[str, Any]:
        """The status without kopf's bookkeeping (`status.kopf`)."""
        return {k: v for k, v in self.status.items() if k != "kopf"}

    @property
    def observed_generation(self) -> int | None:
        value = self.status.get("observedGeneration")
        return value if isinstance(value, int) else None

    def condition(self, type_: str) -> dict[str, Any] | None:
        for cond in self.status.get("conditions") or ():
            if isinstance(cond, Mapping) and cond.get("type") == type_:
                return dict(cond)
        return None

    def is_true(self, type_: str) -> bool:
        """`type_` is True and stamped with the resource's current generation."""
        cond = self.condition(type_)
        return cond is not None and cond.get("status") == "True" and \
            cond.get("observedGeneration") == self.generation


class StatusWatch:
    """A watch on the BatchComputeAttachments of one namespace, recording every event."""

    def __init__(self, api: ApiClient, namespace: str) -> None:
        self.custom = CustomObjectsApi(api)
        self.namespace = namespace
        self._seen: list[Seen] = []
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StatusWatch:
        listed: dict[str, Any] = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL)
        version = str(listed["metadata"]["resourceVersion"])
        self._thread = threading.Thread(target=self._run, args=(version,),
                                        name=f"watch {self.namespace}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=WATCH_SECONDS + 10)

    def _run(self, version: str) -> None:
        try:
            while not self._stopping.is_set():
                stream = watch.Watch().stream(
                    self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace,
                    PLURAL, resource_version=version, timeout_seconds=WATCH_SECONDS)
                for event in stream:
                    seen = Seen(time.time(), str(event["type"]),
                                copy.deepcopy(event["raw_object"]))
                    version = str(seen.obj["metadata"]["resourceVersion"])
                    with self._changed:
                        self._seen.append(seen)
                        self._changed.notify_all()
        except BaseException as exc:  # handed to the test on its next wait
            with self._changed:
                self._error = exc
                self._changed.notify_all()

    def states(self, name: str) -> list[Seen]:
        """Every event seen so far for the resource called `name`, in order."""
        with self._changed:
            self._raise()
            return [s for s in self._seen if s.name == name]

    def wait(self, name: str, predicate: Callable[[Seen], bool], *, after: int = 0,
             timeout: float = 30.0, message: str = "") -> Seen:
        """The first event for `name` at index `after` or later that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                self._raise()
                states = [s for s in self._seen if s.name == name]
                for seen in states[after:]:
                    if predicate(seen):
                        return seen
                left = deadline - time.monotonic()
                if left <= 0:
                    last = states[-1].obj.get("status") if states else None
                    raise AssertionError(
                        f"timed out after {timeout:.0f}s waiting for {name}: "
                        f"{message or 'a state'}; last status seen: {last!r}")
                self._changed.wait(timeout=left)

    def _raise(self) -> None:
        if self._error is not None:
            raise AssertionError(f"the watch stream failed: {self._error!r}") from self._error
