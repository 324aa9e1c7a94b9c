"""ARM conventions: resource ids, route matching, api-versions and the error body shape."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

PROVIDER = "Microsoft.MachineLearningServices"
WORKSPACE_TYPE = f"{PROVIDER}/workspaces"
COMPUTE_TYPE = f"{PROVIDER}/workspaces/computes"
NOT_FOUND_HINT = "For more details please go to https://aka.ms/ARMResourceNotFoundFix"

# ARM treats fixed segments and resource group names case-insensitively.
_PROV = re.escape(PROVIDER)
_WS = (
    r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    rf"/providers/{_PROV}/workspaces/(?P<ws>[^/]+)"
)
_LOC = rf"^/subscriptions/(?P<sub>[^/]+)/providers/{_PROV}/locations/(?P<loc>[^/]+)"
# The workspace's regional API host serves the same computes under this prefix (SDK v1 reads
# them there); the emulator answers both hosts on one port.
REGIONAL_PREFIX = "/rp/workspaces"
_REGIONAL = "^" + re.escape(REGIONAL_PREFIX)
_ROUTES: tuple[tuple[str, bool, re.Pattern[str]], ...] = tuple(
    (target, regional, re.compile(pattern, re.IGNORECASE))
    for target, regional, pattern in (
        ("subscriptions", False, r"^/subscriptions/?$"),
        ("subscription", False, r"^/subscriptions/(?P<sub>[^/]+)/?$"),
        ("workspace", False, "^" + _WS + r"/?$"),
        ("list", False, "^" + _WS + r"/computes/?$"),
        ("compute", False, "^" + _WS + r"/computes/(?P<name>[^/]+)/?$"),
        ("operation", False, _LOC + r"/computeOperationsStatus/(?P<op>[^/]+)/?$"),
        ("result", False, _LOC + r"/computeOperationsResults/(?P<op>[^/]+)/?$"),
        ("list", True, _REGIONAL + _WS + r"/computes/?$"),
        ("compute", True, _REGIONAL + _WS + r"/computes/(?P<name>[^/]+)/?$"),
    )
)
_SUB_ONLY = re.compile(r"^(?:" + _REGIONAL + r")?/subscriptions/(?P<sub>[^/]+)", re.IGNORECASE)
_LEADING_SLASHES = re.compile(r"^/{2,}")


class ArmError(Exception):
    """An ARM error answer: `{"error": {"code", "message"}}` with a status and extra headers."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> web.Response:
        return json_response(error_body(self.code, self.message), self.status, self.headers)


@dataclass(frozen=True)
class Route:
    """A matched path. `target` is subscriptions|subscription|workspace|list|compute|operation|
    result|unknown; `regional` marks the workspace's regional API host (`/rp/workspaces/...`);
    `path` is the path as ARM reads it (see `normalize_path`)."""

    target: str
    path: str = "/"
    regional: bool = False
    subscription: str | None = None
    resource_group: str | None = None
    workspace: str | None = None
    name: str | None = None
    location: str | None = None
    operation_id: str | None = None

    @property
    def kind_target(self) -> str:
        """The fault/log target; Location polls count as operation reads, and the list of
        subscriptions and one subscription are both `subscription`."""
        if self.target == "result":
            return "operation"
        return "subscription" if self.target == "subscriptions" else self.target


def normalize_path(path: str) -> str:
    """Read `//subscriptions/...` as `/subscriptions/...`, as ARM's front door does.

    SDK v1 joins its cloud's `resource_manager` (`https://management.azure.com/`, trailing
    slash included) with ids that start with `/`, and has always worked against ARM that way.
    """
    return _LEADING_SLASHES.sub("/", path)


def match_route(raw_path: str) -> Route:
    path = normalize_path(raw_path)
    for target, regional, pattern in _ROUTES:
        m = pattern.match(path)
        if m:
            groups = m.groupdict()
            return Route(
                target=target,
                path=path,
                regional=regional,
                subscription=groups.get("sub"),
                resource_group=groups.get("rg"),
                workspace=groups.get("ws"),
                name=groups.get("name"),
                location=groups.get("loc"),
                operation_id=groups.get("op"),
            )
    m = _SUB_ONLY.match(path)
    return Route(
        target="unknown",
        path=path,
        regional=path.lower().startswith(REGIONAL_PREFIX),
        subscription=m.group("sub") if m else None,
    )


def method_kind(method: str) -> str:
    """The throttling class of a request: read, write or delete."""
    if method == "DELETE":
        return "delete"
    if method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    return "write"


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def not_found(resource_type: str, name: str, resource_group: str) -> ArmError:
    return ArmError(
        404,
        "ResourceNotFound",
        f"The Resource '{resource_type}/{name}' under resource group '{resource_group}' "
        f"was not found. {NOT_FOUND_HINT}",
    )


def workspace_id(sub: str, rg: str, ws: str) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{PROVIDER}/workspaces/{ws}"


def compute_id(sub: str, rg: str, ws: str, name: str) -> str:
    return f"{workspace_id(sub, rg, ws)}/computes/{name}"


def operation_path(sub: str, location: str, kind: str, op_id: str) -> str:
    """`kind` is computeOperationsStatus (Azure-AsyncOperation) or computeOperationsResults."""
    return f"/subscriptions/{sub}/providers/{PROVIDER}/locations/{location}/{kind}/{op_id}"


@dataclass(frozen=True)
class BatchAccountRef:
    subscription: str
    resource_group: str
    name: str


def parse_batch_account_id(resource_id: str) -> BatchAccountRef | None:
    """Apply the SDK v1 rule: nine `/`-separated parts, part six `Microsoft.Batch`."""
    parts = resource_id.split("/")
    if len(parts) != 9 or parts[0] != "":
        return None
    if [p.lower() for p in (parts[1], parts[3], parts[5], parts[6], parts[7])] != [
        "subscriptions",
        "resourcegroups",
        "providers",
        "microsoft.batch",
        "batchaccounts",
    ]:
        return None
    if not all(parts[i] for i in (2, 4, 8)):
        return None
    return BatchAccountRef(parts[2], parts[4], parts[8])


def version_key(api_version: str) -> str:
    """The date part, so preview versions compare with their GA siblings."""
    return api_version.split("-preview")[0]


def normalize_location(location: str) -> str:
    """ARM accepts both `West Europe` and `westeurope`."""
    return location.replace(" ", "").lower()


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat()


def iso_from_epoch(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()
