"""The resource handlers: subscriptions, workspace, computes (get, list, put, delete),
operations, and the workspace's discovery document."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any
from urllib.parse import quote

from aiohttp import web

from .arm import ArmError, Route, json_response, normalize_location, utc_now_iso, version_key
from .arm import parse_batch_account_id as parse_account
from .config import BATCH_MAX_API_VERSION
from .operations import Operation
from .runtime import Emulator
from .state import Compute, Workspace, subscription_json

# The service gives no pattern for compute names; its own messages for compute instances allow
# 3-24 letters, digits and '-', starting with a letter. The same conservative rule applies here.
COMPUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{2,23}$")
# ARM's limit on tag name/value pairs per resource; ARM refuses more before the resource
# provider sees the request.
MAX_TAGS = 50
# The services a workspace's discovery document names; SDK v1 looks each of them up.
DISCOVERY_KEYS = (
    "api",
    "catalog",
    "experimentation",
    "gallery",
    "history",
    "hyperdrive",
    "labeling",
    "modelmanagement",
    "pipelines",
    "studio",
    "studiocoreservices",
)


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _validation(message: str, code: str = "ValidationError") -> ArmError:
    return ArmError(400, code, message)


def _workspace(emu: Emulator, route: Route) -> Workspace:
    assert route.subscription is not None
    assert route.resource_group is not None
    assert route.workspace is not None
    return emu.store.workspace(route.subscription, route.resource_group, route.workspace)


def _operation_headers(
    request: web.Request, emu: Emulator, op: Operation, api_version: str
) -> dict[str, str]:
    query = f"?api-version={quote(api_version)}"
    return {
        "Azure-AsyncOperation": _base(request) + op.path("computeOperationsStatus") + query,
        "Location": _base(request) + op.path("computeOperationsResults") + query,
        "Retry-After": str(emu.config.retry_after_seconds),
    }


async def list_subscriptions(
    emu: Emulator, request: web.Request, route: Route, api_version: str
) -> web.Response:
    """Every seeded subscription: the caller's token is valid for all of them."""
    tenant = emu.config.tenant_id
    value = [subscription_json(sub, tenant) for sub in emu.store.subscriptions.values()]
    return json_response({"value": value, "count": {"type": "Total", "value": len(value)}})


async def get_subscription(
    emu: Emulator, request: web.Request, route: Route, api_version: str
) -> web.Response:
    assert route.subscription is not None
    emu.store.check_subscription(route.subscription)
    spelled = emu.store.subscriptions[route.subscription.lower()]
    return json_response(subscription_json(spelled, emu.config.tenant_id))


async def get_workspace(
    emu: Emulator, request: web.Request, route: Route, api_version: str
) -> web.Response:
    return json_response(_workspace(emu, route).to_json(_base(request)))


def discovery_document(request: web.Request) -> dict[str, str]:
    """The answer of a workspace's `discoveryUrl`: every service of the region is this host,
    so no client that follows it leaves the emulator."""
    return dict.fromkeys(DISCOVERY_KEYS, _base(request))


async def get_compute(
    emu: Emulator, request: web.Request, route: Route, api_version: str
) -> web.Response:
    ws = _workspace(emu, route)
    assert route.name
    compute = emu.store.compute(ws, route.name)
    if compute is None:
        raise ArmError(
            404,
            "ResourceNotFound",
            f"The compute '{route.name}' was not found in workspace '{ws.name}'.",
        )
    return json_response(compute.to_json())


def _encode_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _decode_token(token: str) -> str:
    try:
        padded = token + "=" * (-len(token) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise _validation("The $skipToken is not valid.", "InvalidSkipToken") from exc


async def list_computes(
    emu: Emulator, request: web.Request, route: Route, api_version: str
) -> web.Response:
    """Pages keyed by the last name returned, so computes added meanwhile never repeat one."""
    ws = _workspace(emu, route)
    computes = emu.store.computes_in(ws)
    token = request.query.get("$skipToken")
    if token:
        after = _decode_token(token)
        computes = [c for c in computes if c.name.lower() > after]
    page = computes[: emu.config.page_size]
    body: dict[str, Any] = {"value": [c.to_json() for c in page]}
    if len(computes) > len(page):
        next_token = _encode_token(page[-1].name.lower())
        body["nextLink"] = (
            f"{_base(request)}{request.path}?api-version={quote(api_version)}"
            f"&$skipToken={quote(next_token)}"
        )
    return json_response(body)


def _parse_put(raw: bytes, ws: Workspace, api_version: str) -> dict[str, Any]:
    try:
        payload = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _validation(
            "The request content is not valid JSON.", "InvalidRequestContent"
        ) from exc
    if not isinstance(payload, dict):
        raise _validation("The request content must be a JSON object.", "InvalidRequestContent")
    tags = payload.get("tags")
    if isinstance(tags, dict) and len(tags) > MAX_TAGS:
        raise _validation(
            f"Too many tags specified. Requested tag count - '{len(tags)}'. Maximum number of "
            f"tags allowed - '{MAX_TAGS}'.",
            "InvalidTags",
        )
    location = payload.get("location")
    if not isinstance(location, str) or not location:
        raise _validation(
            "The location property is required for this definition.", "LocationRequired"
        )
    if normalize_location(location) != ws.operation_location:
        raise _validation(
            f"The compute location '{location}' must be the workspace location '{ws.location}'.",
            "InvalidLocation",
        )
    if tags is not None and (
        not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values())
    ):
        raise _validation("tags must be an object of strings.", "InvalidRequestContent")
    props = payload.get("properties")
    if not isinstance(props, dict):
        raise _validation("The properties object is required.", "InvalidRequestContent")
    compute_type = props.get("computeType")
    if not isinstance(compute_type, str) or not compute_type:
        raise _validation("properties.computeType is required.", "InvalidRequestContent")
    if compute_type != "Batch":
        raise _validation(
            f"Compute type '{compute_type}' cannot be attached here; only 'Batch' is supported.",
            "InvalidComputeType",
        )
    if version_key(api_version) >= BATCH_MAX_API_VERSION:
        raise _validation(
            f"Compute type 'Batch' is not supported in api-version '{api_version}'.",
            "InvalidComputeType",
        )
    resource_id = props.get("resourceId")
    if not isinstance(resource_id, str) or not resource_id:
        raise _validation("properties.resourceId is required for an attached compute.")
    if parse_account(resource_id) is None:
        raise _validation(
            f"The resource id '{resource_id}' is not a Batch account id.", "LinkedInvalidPropertyId"
        )
    description = props.get("description")
    if description is not None and not isinstance(description, str):
        raise _validation("properties.description must be a string.", "InvalidRequestContent")
    return {
        "location": location,
        "tags": tags,
        "resourceId": resource_id,
        "description": description,
    }


def _check_replaceable(existing: Compute, resource_id: str) -> None:
    props = existing.properties
    if existing.operation_id is not None:
        raise ArmError(
            409,
            "Conflict",
            f"An operation is in progress on compute "
            f"'{existing.name}'; retry when it has finished.",
        )
    existing_type = str(props.get("computeType"))
    if existing_type != "Batch":
        raise ArmError(
            409,
            "Conflict",
            f"A compute named '{existing.name}' of type "
            f"'{existing_type}' already exists in this workspace.",
        )
    existing_id = str(props.get("resourceId") or "")
    if existing_id.lower() != resource_id.lower():
        raise ArmError(
            409,
            "Conflict",
            f"Compute '{existing.name}' is already attached to "
            f"'{existing_id}'; detach it before attaching another resource.",
        )


async def put_compute(
    emu: Emulator, request: web.Request, route: Route, api_version: str
) -> web.Response:
    ws = _workspace(emu, route)
    assert route.name
    if not COMPUTE_NAME.match(route.name):
        raise _validation(
            f"Compute name '{route.name}' is invalid: use 3 to 24 letters, digits "
            "or '-', starting with a letter.",
            "InvalidComputeName",
        )
    spec = _parse_put(await request.read(), ws, api_version)
    existing = emu.store.compute(ws, route.name)
    now = utc_now_iso()
    if existing is not None:
        _check_replaceable(existing, spec["resourceId"])
        compute, status = existing, 200
        compute.tags = spec["tags"]
        compute.properties.update(
            description=spec["description"], provisioningState="Updating", modifiedOn=now
        )
    else:
        compute, status = (
            Compute(
                ws.subscription,
                ws.resource_group,
                ws.name,
                route.name,
                spec["location"],
                spec["tags"],
                {
                    "computeType": "Batch",
                    "computeLocation": None,
                    "provisioningState": "Creating",
                    "provisioningErrors": None,
                    "description": spec["description"],
                    "createdOn": now,
                    "modifiedOn": now,
                    "resourceId": spec["resourceId"],
                    "isAttachedCompute": True,
                },
            ),
            201,
        )
        emu.store.put_compute(compute)
    forced = emu.faults.take_operation_outcome(
        request.method, request.path, frozenset({"write", "compute"})
    )
    op = emu.operations.start(compute, ws.operation_location, "attach", forced)
    return json_response(
        compute.to_json(), status, _operation_headers(request, emu, op, api_version)
    )


async def delete_compute(
    emu: Emulator, request: web.Request, route: Route, api_version: str
) -> web.Response:
    ws = _workspace(emu, route)
    assert route.name
    action = request.query.get("underlyingResourceAction")
    if action is None or action.lower() not in ("detach", "delete"):
        raise _validation(
            "underlyingResourceAction is required and must be 'Delete' or 'Detach'.",
            "InvalidUnderlyingResourceAction",
        )
    compute = emu.store.compute(ws, route.name)
    if compute is None:
        return web.Response(status=204)
    if action.lower() == "delete" and compute.properties.get("computeType") == "Batch":
        raise _validation(
            "Delete is not supported for BatchCompute; use detach "
            "(underlyingResourceAction=Detach). The Batch account is never deleted.",
            "UnsupportedUnderlyingResourceAction",
        )
    if compute.operation_id is not None:
        raise ArmError(
            409,
            "Conflict",
            f"An operation is in progress on compute '{compute.name}'; retry when it has finished.",
        )
    forced = emu.faults.take_operation_outcome(
        request.method, request.path, frozenset({"delete", "compute"})
    )
    op = emu.operations.start(compute, ws.operation_location, "detach", forced)
    compute.properties.update(provisioningState="Deleting", modifiedOn=utc_now_iso())
    return web.Response(status=202, headers=_operation_headers(request, emu, op, api_version))


def _operation(emu: Emulator, route: Route) -> Operation:
    assert route.subscription is not None
    assert route.location is not None
    assert route.operation_id is not None
    emu.store.check_subscription(route.subscription)
    op = emu.operations.find(route.subscription, route.location, route.operation_id)
    if op is None:
        raise ArmError(
            404, "ResourceNotFound", f"The operation '{route.operation_id}' was not found."
        )
    return op


async def get_operation_status(
    emu: Emulator, request: web.Request, route: Route, api_version: str
) -> web.Response:
    op = _operation(emu, route)
    return json_response(op.to_json(emu.config.operation_error_style))


async def get_operation_result(
    emu: Emulator, request: web.Request, route: Route, api_version: str
) -> web.Response:
    """ARM's Location protocol: 202 while running; then the result, 204, or the error."""
    op = _operation(emu, route)
    if not op.done:
        location = f"{_base(request)}{request.path_qs}"
        return web.Response(
            status=202,
            headers={"Location": location, "Retry-After": str(emu.config.retry_after_seconds)},
        )
    if op.status != "Succeeded":
        assert op.error is not None
        return json_response({"error": dict(op.error)}, 400 if op.status == "Failed" else 409)
    compute = emu.store.computes.get(op.compute_key)
    if op.action == "detach" or compute is None:
        return web.Response(status=204)
    return json_response(compute.to_json())
