"""Which workspaces each namespace may attach to: a platform team's tenancy rule.

`BCO_WORKSPACE_POLICY` (JSON, or `@/path/to/file.json`) maps a namespace, or `*` for every
other namespace, to patterns `subscriptionId/resourceGroup/workspace` where `*` matches any
one part, compared case-insensitively as ARM does. Without a policy every namespace may use
every workspace the operator's identity can reach. A denied spec makes no ARM call.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from batchcompute_operator.spec import WorkspaceRef


class PolicyError(ValueError):
    """The policy setting itself is malformed; the operator refuses to start."""


@dataclass(frozen=True)
class WorkspacePolicy:
    rules: Mapping[str, tuple[str, ...]] | None = None  # None: no policy, all allowed

    @classmethod
    def parse(cls, raw: str | None) -> WorkspacePolicy:
        if raw is None or not raw.strip():
            return cls(None)
        text = Path(raw[1:]).read_text() if raw.startswith("@") else raw
        try:
            data = json.loads(text)
        except ValueError as err:
            raise PolicyError(f"BCO_WORKSPACE_POLICY is not JSON: {err}") from None
        if not isinstance(data, dict):
            raise PolicyError("BCO_WORKSPACE_POLICY must map namespaces to lists of patterns")
        rules: dict[str, tuple[str, ...]] = {}
        for namespace, patterns in data.items():
            if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
                raise PolicyError(f"BCO_WORKSPACE_POLICY[{namespace!r}] must be a list of strings")
            for pattern in patterns:
                if pattern.count("/") != 2:
                    raise PolicyError(
                        f"pattern {pattern!r}: expected subscriptionId/resourceGroup/workspace")
            rules[str(namespace)] = tuple(p.lower() for p in patterns)
        return cls(rules)

    def patterns_for(self, namespace: str) -> Sequence[str] | None:
        if self.rules is None:
            return None
        return self.rules.get(namespace, self.rules.get("*", ()))

    def denial(self, namespace: str, workspace: WorkspaceRef) -> str | None:
        """None when allowed; otherwise the message the resource's owner will read."""
        patterns = self.patterns_for(namespace)
        if patterns is None:
            return None
        target = f"{workspace.subscription_id}/{workspace.resource_group}/{workspace.name}".lower()
        parts = target.split("/")
        for pattern in patterns:
            if all(fnmatch.fnmatchcase(part, pat)
                   for part, pat in zip(parts, pattern.split("/"), strict=True)):
                return None
        return (f"namespace {namespace!r} may not attach to workspace {workspace.name!r} in "
                f"resource group {workspace.resource_group!r} of subscription "
                f"{workspace.subscription_id}: the operator's workspace policy does not allow it")
