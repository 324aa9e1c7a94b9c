"""The unit tests' status fixtures (tests/unit/fixtures/statuses/) against the live operator.

`status_shape` reduces an object to what the GitOps readers and the status contract care
about: which status fields are present, which conditions say what for which generation, the
operation in flight and the error codes. A fixture and the live state it stands for must have
the same shape, so the unit tests of the Argo CD health check and kstatus run on statuses the
operator really writes.

`as_fixture` turns a recorded object into a fixture: the test bed's names (namespace, uid,
resource groups, workspace, Batch account, subscription) become the fixtures' (team-a,
ml-rg, ml-ws, batch-rg, mybatchacct, ...), timestamps keep their offset from the object's
creation, and server bookkeeping (managedFields, resourceVersion) is made constant.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "statuses"

NAMESPACE = "team-a"
UID = "6d1f0c55-5b1e-4f0e-9d7a-3a51a1f0b001"
RESOURCE_VERSION = "1042"
SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
CREATED = datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
STAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def load_fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def status_shape(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What a fixture must share with the live state it stands for."""
    metadata = obj.get("metadata") or {}
    status = obj.get("status") or {}
    generation = metadata.get("generation")

    def stamped(value: Any) -> str:
        if value is None:
            return "absent"
        return "current" if value == generation else "older"

    operation = status.get("operation")
    return {
        "deleting": metadata.get("deletionTimestamp") is not None,
        "fields": sorted(k for k in status if k != "kopf"),
        "observedGeneration": stamped(status.get("observedGeneration")),
        "operation": operation.get("kind") if isinstance(operation, Mapping) else None,
        "provisioningState": status.get("provisioningState"),
        "errors": [e.get("code") for e in status.get("provisioningErrors") or ()],
        "conditions": [(c.get("type"), c.get("status"), c.get("reason"),
                        stamped(c.get("observedGeneration")))
                       for c in status.get("conditions") or ()],
    }


def as_fixture(obj: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """`obj` with the test bed's names replaced by the fixtures' (`names`: live -> fixture)."""
    metadata = obj["metadata"]
    created = datetime.strptime(metadata["creationTimestamp"], STAMP_FORMAT).replace(tzinfo=UTC)
    replacements = sorted({**names, metadata["namespace"]: NAMESPACE,
                           metadata["uid"]: UID}.items(), key=lambda kv: -len(kv[0]))

    def rewrite(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: rewrite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        if isinstance(value, str):
            if TIMESTAMP.match(value):
                when = datetime.strptime(value, STAMP_FORMAT).replace(tzinfo=UTC)
                return (CREATED + timedelta(seconds=(when - created).total_seconds())
                        ).strftime(STAMP_FORMAT)
            for live, fixture in replacements:
                value = value.replace(live, fixture)
            return value
        return value

    fixture: dict[str, Any] = rewrite({k: v for k, v in obj.items() if k != "status"})
    fixture["metadata"].pop("managedFields", None)
    fixture["metadata"]["resourceVersion"] = RESOURCE_VERSION
    status = obj.get("status")
    if isinstance(status, Mapping):
        fixture["status"] = rewrite({k: v for k, v in status.items() if k != "kopf"})
    return fixture


def write_fixture(name: str, fixture: Mapping[str, Any]) -> Path:
    path = FIXTURES / f"{name}.json"
    path.write_text(json.dumps(fixture, indent=2) + "\n")
    return path
