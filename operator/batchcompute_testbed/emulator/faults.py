"""Injected faults: canned answers, dropped connections, stalls and forced operation results."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

from .operations import ForcedOutcome

METHODS = frozenset({"GET", "PUT", "DELETE", "POST", "PATCH", "HEAD"})
KINDS = frozenset(
    {
        "read",
        "write",
        "delete",
        "operation",
        "list",
        "workspace",
        "compute",
        "identity",
        "subscription",
        "discovery",
    }
)


@dataclass
class Fault:
    id: int
    method: str | None
    path_regex: re.Pattern[str] | None
    kind: str | None
    remaining: int | None  # None: until cleared
    action: dict[str, Any]

    @property
    def action_type(self) -> str:
        for name in ("operation_result", "stall_seconds", "close", "status"):
            if name in self.action:
                return {"stall_seconds": "stall"}.get(name, name)
        raise AssertionError("validated at creation")

    def matches(self, method: str, path: str, kinds: frozenset[str]) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.kind is not None and self.kind not in kinds:
            return False
        return self.path_regex is None or self.path_regex.search(path) is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "path_regex": self.path_regex.pattern if self.path_regex else None,
            "kind": self.kind,
            "remaining": self.remaining,
            "action": self.action,
        }


def _validate_action(action: Any) -> dict[str, Any]:
    if not isinstance(action, dict):
        raise ValueError("action must be an object")
    kinds = [k for k in ("status", "close", "stall_seconds", "operation_result") if k in action]
    if len(kinds) != 1 and not (set(kinds) == {"stall_seconds", "close"}):
        raise ValueError(
            "action needs exactly one of status, close, stall_seconds, operation_result"
            " (stall_seconds may be combined with close)"
        )
    if "status" in action:
        status = action["status"]
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code")
        if "body" in action and "raw" in action:
            raise ValueError("give body or raw, not both")
        if "raw" in action and not isinstance(action["raw"], str):
            raise ValueError("raw must be a string")
        retry_after = action.get("retry_after")
        if retry_after is not None and (
            isinstance(retry_after, bool) or not isinstance(retry_after, int | float)
        ):
            raise ValueError("retry_after must be a number")
    if "close" in action and action["close"] is not True:
        raise ValueError("close must be true")
    if "stall_seconds" in action:
        stall = action["stall_seconds"]
        if isinstance(stall, bool) or not isinstance(stall, int | float) or stall < 0:
            raise ValueError("stall_seconds must be a non-negative number")
    if "operation_result" in action:
        if action["operation_result"] not in ("Failed", "Canceled"):
            raise ValueError("operation_result must be Failed or Canceled")
        for key in ("code", "message"):
            if key in action and not isinstance(action[key], str):
                raise ValueError(f"{key} must be a string")
    return action


class FaultBook:
    """Faults in the order they were added; the first match wins and uses up one count."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)

    def add(self, data: Any) -> Fault:
        if not isinstance(data, dict):
            raise ValueError("fault must be a JSON object")
        method = data.get("method")
        if method is not None and (not isinstance(method, str) or method.upper() not in METHODS):
            raise ValueError(f"method must be one of {sorted(METHODS)} or null")
        kind = data.get("kind")
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)} or null")
        raw_regex = data.get("path_regex")
        try:
            regex = re.compile(raw_regex, re.IGNORECASE) if raw_regex is not None else None
        except (re.error, TypeError) as exc:
            raise ValueError(f"path_regex is not a regular expression: {exc}") from exc
        count = data.get("count", 1)
        if count is not None and (
            isinstance(count, bool) or not isinstance(count, int) or count < 1
        ):
            raise ValueError("count must be a positive integer or null (unlimited)")
        fault = Fault(
            id=next(self._ids),
            method=method.upper() if method else None,
            path_regex=regex,
            kind=kind,
            remaining=count,
            action=_validate_action(data.get("action")),
        )
        self._faults.append(fault)
        return fault

    def _take(
        self, method: str, path: str, kinds: frozenset[str], operation: bool, explicit: bool = False
    ) -> Fault | None:
        for fault in self._faults:
            if (fault.action_type == "operation_result") != operation:
                continue
            if explicit and fault.kind is None and fault.path_regex is None:
                continue
            if fault.matches(method, path, kinds):
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    def take_request_fault(
        self, method: str, path: str, kinds: frozenset[str], explicit: bool = False
    ) -> Fault | None:
        """A fault for the request itself (answer, close or stall), used up if found.

        `explicit` (the token endpoint) skips faults that name neither a kind nor a path, so a
        catch-all fault meant for ARM is not spent on a token request.
        """
        return self._take(method, path, kinds, operation=False, explicit=explicit)

    def take_operation_outcome(
        self, method: str, path: str, kinds: frozenset[str]
    ) -> ForcedOutcome | None:
        """A forced result for the operation this request is about to start."""
        fault = self._take(method, path, kinds, operation=True)
        if fault is None:
            return None
        status = fault.action["operation_result"]
        default_code = "InternalServerError" if status == "Failed" else "OperationCanceled"
        return ForcedOutcome(
            status=status,
            code=fault.action.get("code", default_code),
            message=fault.action.get("message", f"The operation was {status.lower()}."),
        )

    def clear(self) -> None:
        self._faults.clear()

    def to_json(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self._faults]
