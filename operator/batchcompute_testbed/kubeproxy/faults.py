"""What the Kubernetes fault proxy does to a request: the rules, and which request they match.

Pure data and matching, no I/O: `proxy.py` applies them. A rule matches by HTTP method and a
regular expression searched in the request path (never the query), and by whether the request
is a watch (`?watch=true`) or not. Rules are tried in the order they were added; the first
that matches and has uses left applies.
"""

from __future__ import annotations

import enum
import re
import time
from dataclasses import dataclass, field
from typing import TypedDict

# Paths the operator writes to, for rules that aim at one kind of request.
STATUS_PATCH = ("PATCH", r"^/apis/[^/]+/[^/]+/namespaces/[^/]+/[^/]+/[^/]+/status$")
EVENT_POST = ("POST", r"^/api/v1/namespaces/[^/]+/events$")


class Action(enum.Enum):
    DELAY = "delay"  # hold the request `seconds` (or until the rule is removed), then forward
    STATUS = "status"  # answer with `status` at once; the API server never sees the request
    RESET = "reset"  # reset the client's connection; the API server never sees the request
    LOSE = "lose"  # forward, then reset the client's connection: done, but never answered
    STALL = "stall"  # watches: keep the stream open and send nothing more on it, ever
    CUT = "cut"  # watches: reset the stream's connection `seconds` after it began


WATCH_ACTIONS = frozenset({Action.STALL, Action.CUT})


@dataclass
class Rule:
    action: Action
    methods: frozenset[str] = frozenset()  # empty: any method
    path: str = ""  # a regular expression searched in the path; empty: any path
    seconds: float = 0.0
    status: int = 503
    retry_after: int | None = None
    reason: str = "ServiceUnavailable"
    message: str = "injected by the fault proxy"
    count: int | None = None  # uses left; None: until removed
    id: int = 0
    hits: int = 0
    first_hit: float | None = None  # time.monotonic() of the first request it met
    _pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.methods = frozenset(m.upper() for m in self.methods)
        self._pattern = re.compile(self.path)
        if self.action in (Action.DELAY, Action.CUT) and self.seconds < 0:
            raise ValueError("seconds must not be negative")
        if self.action is Action.STATUS and not 400 <= self.status <= 599:
            raise ValueError("an injected status must be an error (400-599)")

    @property
    def for_watches(self) -> bool:
        return self.action in WATCH_ACTIONS

    def matches(self, method: str, path: str, watch: bool) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        if watch != self.for_watches:
            return False
        if self.methods and method.upper() not in self.methods:
            return False
        return self._pattern.search(path) is not None

    def use(self) -> None:
        self.hits += 1
        if self.first_hit is None:
            self.first_hit = time.monotonic()
        if self.count is not None:
            self.count -= 1

    def describe(self) -> str:
        if self.action is Action.STATUS:
            return f"status {self.status}"
        if self.action in (Action.DELAY, Action.CUT):
            return f"{self.action.value} {self.seconds:g}s"
        return str(self.action.value)

    def status_body(self) -> dict[str, object]:
        """The answer a kube-apiserver gives for this status: a metav1.Status."""
        body: dict[str, object] = {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.status,
        }
        if self.retry_after is not None:
            body["details"] = {"retryAfterSeconds": self.retry_after}
        return body


class Answer(TypedDict):
    """The fields of a STATUS rule that make its answer look like the API server's own."""

    status: int
    reason: str
    retry_after: int
    message: str


def server_timeout(operation: str, resource: str, retry_after: int = 1) -> Answer:
    """Rule fields for the API server's own "try again" answer to a request it could not
    finish in time (500, reason ServerTimeout, with Retry-After)."""
    return {
        "status": 500, "reason": "ServerTimeout", "retry_after": retry_after,
        "message": f"The {operation} operation against {resource} could not be completed at "
                   "this time, please try again.",
    }


def too_many_requests(retry_after: int = 1) -> Answer:
    """Rule fields for the API server's answer when its max-in-flight limit is reached."""
    return {"status": 429, "reason": "TooManyRequests", "retry_after": retry_after,
            "message": "Too many requests, please try again later."}
