"""The API server's JSON-lines audit log, read phase by phase through byte offsets."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from batchcompute_testbed.controlplane import OPERATOR_USERNAME

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


class AuditCursor:
    """Remembers how far the log has been read; `take()` counts the operator's writes since."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def skip(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def take(self) -> Counter[str]:
        """Operator writes (completed requests) since the last call, by verb and resource."""
        writes: Counter[str] = Counter()
        if not self.path.exists():
            return writes
        with self.path.open("rb") as log:
            log.seek(self.offset)
            data = log.read()
        end = data.rfind(b"\n") + 1  # leave a half-written last line for next time
        self.offset += end
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            event = json.loads(line)
            if (event.get("stage") != "ResponseComplete"
                    or event.get("user", {}).get("username") != OPERATOR_USERNAME
                    or event.get("verb") not in WRITE_VERBS):
                continue
            ref = event.get("objectRef", {})
            resource = ref.get("resource", "?")
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            writes[f"{event['verb']} {resource}"] += 1
        return writes

    def take_settled(self, quiet: float = 2.0, limit: float = 30.0) -> Counter[str]:
        """`take()`, once the writes have stopped for `quiet` seconds (at most `limit`).

        Events are posted off the reconcile path and may trail the last status write by
        seconds under load; counting them at once would under-count.
        """
        writes = self.take()
        started = last = time.monotonic()
        while time.monotonic() - last < quiet and time.monotonic() - started < limit:
            time.sleep(0.25)
            more = self.take()
            if more:
                writes += more
                last = time.monotonic()
        return writes
