"""The emulator's request log, read phase by phase through sequence marks."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from batchcompute_testbed.stack import EmulatorProcess


@dataclass
class ArmCalls:
    """ARM requests (token-endpoint calls excluded) made in one phase."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.entries)

    def count(self, method: str | None = None, *, status: int | None = None,
              subscription: str | None = None, target: str | None = None) -> int:
        return sum(1 for e in self.entries
                   if (method is None or e["method"] == method)
                   and (target is None or e["target"] == target)
                   and (status is None or e["status"] == status)
                   and (subscription is None
                        or str(e["subscription"] or "").lower() == subscription.lower()))

    def throttled(self) -> int:
        return sum(1 for e in self.entries if e["status"] == 429 or e["throttled"])

    def most_lists_of_one_workspace(self) -> int:
        """The most LIST pages any one workspace was asked for (its path names it)."""
        lists = Counter(e["path"].lower() for e in self.entries
                        if e["method"] == "GET" and e["target"] == "list")
        return max(lists.values(), default=0)

    def breakdown(self) -> Counter[str]:
        return Counter(f"{e['method']} {e['target']} {e['status']}" for e in self.entries)


class ArmCursor:
    def __init__(self, emulator: EmulatorProcess) -> None:
        self.emulator = emulator
        self.seq = 0

    def _since(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.emulator.admin(
            "GET", "requests", params={"since": str(self.seq)})
        if entries:
            self.seq = max(e["seq"] for e in entries)
        return entries

    def skip(self) -> None:
        self._since()

    def take(self) -> ArmCalls:
        # The operator's token-less readiness probe (GET /subscriptions) is not workspace work.
        return ArmCalls([e for e in self._since() if e["kind"] != "identity"
                         and e["path"] != "/subscriptions"])
