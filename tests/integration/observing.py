"""What a user can read back, for the ownership and failure tests: conditions of the current
generation, the emulator's request log, and `kubectl get bca`'s columns."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from operator_proc import Workspace


def last_seq(emulator: Any) -> int:
    entries = emulator.requests()
    return int(entries[-1]["seq"]) if entries else 0


def writes_in(calls: list[dict[str, Any]], ws: Workspace, name: str,
              method: str) -> list[dict[str, Any]]:
    """`method` (PUT, DELETE) requests among `calls` that named this compute, in order."""
    path = ws.compute_path(name).lower()
    return [c for c in calls if c["method"] == method and c["path"].lower() == path]


def writes_to(emulator: Any, since: int, ws: Workspace, name: str,
              method: str = "PUT") -> list[dict[str, Any]]:
    """PUT (or `method`) requests that named this compute since `since`, in order."""
    return writes_in(emulator.requests(since), ws, name, method)


def brief(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The request log in a form short enough for an assertion message."""
    return [(c["seq"], c["method"], c["target"], c["status"], c["fault"],
             c["path"].rsplit("/", 1)[-1]) for c in entries]


def conditions(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The conditions stamped with the object's current generation, by type."""
    if not obj:
        return {}
    gen = obj["metadata"].get("generation")
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])
            if c.get("observedGeneration") == gen}


def kubectl_get_bca(kubeconfig: Path, namespace: str) -> dict[str, dict[str, str]]:
    """`kubectl get bca -n NAMESPACE` as a user reads it: rows by NAME, cells by column.

    Cells are cut at the header's column offsets (kubectl aligns every column with the
    header), so an empty cell reads as "" and not as the next column's value.
    """
    table = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "get", "bca", "-n", namespace],
        capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    header = table[0]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    rows: dict[str, dict[str, str]] = {}
    for line in table[1:]:
        cells = {name: line[a:b].strip() for name, a, b in
                 zip(names, starts, [*starts[1:], len(line) + 1], strict=True)}
        rows[cells["NAME"]] = cells
    return rows
