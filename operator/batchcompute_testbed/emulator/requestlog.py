"""The record of every ARM and token-endpoint request, for tests to assert on.

Headers are not recorded at all; authentication is reduced to one word (none, malformed,
valid, invalid, expired) so that no token ever lands here.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from dataclasses import dataclass, field
from time import monotonic
from time import time as wall_clock
from typing import Any


@dataclass
class Entry:
    seq: int
    time: float
    method: str
    path: str
    query: dict[str, str]
    body: Any
    kind: str
    target: str
    subscription: str | None
    auth: str = "none"
    principal: str | None = None
    status: int | None = None  # None when the connection was dropped
    throttled: bool = False
    fault: str | None = None
    duration_ms: float = 0.0
    _started: float = field(default_factory=monotonic, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "body": self.body,
            "status": self.status,
            "kind": self.kind,
            "target": self.target,
            "subscription": self.subscription,
            "auth": self.auth,
            "principal": self.principal,
            "throttled": self.throttled,
            "fault": self.fault,
            "durationMs": round(self.duration_ms, 3),
        }


class RequestLog:
    """A bounded list of entries plus exact counters that survive the bound."""

    def __init__(self, limit: int) -> None:
        self._entries: deque[Entry] = deque(maxlen=limit)
        self._seq = itertools.count(1)
        self._stats: dict[str, Counter[str]] = {}
        self.clear()

    def open(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        body: Any,
        kind: str,
        target: str,
        subscription: str | None,
    ) -> Entry:
        entry = Entry(
            next(self._seq), wall_clock(), method, path, query, body, kind, target, subscription
        )
        self._entries.append(entry)
        return entry

    def close(self, entry: Entry) -> None:
        """Count a finished request; called once per entry."""
        entry.duration_ms = (monotonic() - entry._started) * 1000
        self._stats["method"][entry.method] += 1
        self._stats["kind"][entry.kind] += 1
        self._stats["target"][entry.target] += 1
        self._stats["status"][str(entry.status) if entry.status is not None else "closed"] += 1
        if entry.throttled:
            self._stats["flags"]["throttled"] += 1
        if entry.fault:
            self._stats["flags"]["faults"] += 1
        self._stats["flags"]["total"] += 1

    def since(self, seq: int) -> list[dict[str, Any]]:
        return [e.to_json() for e in self._entries if e.seq > seq]

    def clear(self) -> None:
        self._entries.clear()
        self._stats = {k: Counter() for k in ("method", "kind", "target", "status", "flags")}

    def stats(self) -> dict[str, Any]:
        flags = self._stats["flags"]
        return {
            "total": flags["total"],
            "throttled": flags["throttled"],
            "faults": flags["faults"],
            "byMethod": dict(self._stats["method"]),
            "byKind": dict(self._stats["kind"]),
            "byTarget": dict(self._stats["target"]),
            "byStatus": dict(self._stats["status"]),
        }
