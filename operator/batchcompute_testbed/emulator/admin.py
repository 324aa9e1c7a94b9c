"""The admin API under /_admin: seeding, tokens, faults, settings, request log, planting.

No authentication: the emulator binds loopback and is a test tool.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .arm import ArmError, json_response, normalize_location, utc_now_iso
from .runtime import EMULATOR, Emulator
from .state import Compute

routes = web.RouteTableDef()


def _emu(request: web.Request) -> Emulator:
    return request.app[EMULATOR]


def _bad(message: str, status: int = 400) -> web.HTTPException:
    cls = web.HTTPNotFound if status == 404 else web.HTTPBadRequest
    return cls(text=json.dumps({"error": message}), content_type="application/json")


async def _json(request: web.Request, default: Any = None) -> Any:
    raw = await request.read()
    if not raw:
        if default is not None:
            return default
        raise _bad("a JSON body is required")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise _bad(f"body is not JSON: {exc}") from exc


@routes.get("/_admin/health")
async def health(request: web.Request) -> web.Response:
    return json_response({"ok": True})


@routes.post("/_admin/seed")
async def seed(request: web.Request) -> web.Response:
    try:
        return json_response(_emu(request).store.seed(await _json(request)))
    except ValueError as exc:
        raise _bad(str(exc)) from exc


@routes.get("/_admin/resources")
async def resources(request: web.Request) -> web.Response:
    return json_response(_emu(request).store.resources_json())


@routes.delete("/_admin/batchAccounts/{sub}/{rg}/{name}")
async def delete_batch_account(request: web.Request) -> web.Response:
    m = request.match_info
    removed = _emu(request).store.remove_batch_account(m["sub"], m["rg"], m["name"])
    return json_response({"deleted": removed})


@routes.post("/_admin/tokens")
async def mint_token(request: web.Request) -> web.Response:
    emu = _emu(request)
    data = await _json(request, default={})
    if not isinstance(data, dict):
        raise _bad("body must be an object")
    expires_in = data.get("expires_in", emu.config.token_lifetime_seconds)
    principal = data.get("principal", "test-principal")
    resource = data.get("resource", "https://management.azure.com")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        raise _bad("expires_in must be a number of seconds")
    if not isinstance(principal, str) or not isinstance(resource, str):
        raise _bad("principal and resource must be strings")
    token, expires_on = emu.tokens.mint(principal, float(expires_in), resource, "minted")
    return json_response({"access_token": token, "expires_on": expires_on, "token_type": "Bearer"})


@routes.delete("/_admin/tokens")
async def revoke_tokens(request: web.Request) -> web.Response:
    return json_response({"revoked": _emu(request).tokens.revoke()})


@routes.get("/_admin/identity")
async def get_identity(request: web.Request) -> web.Response:
    return json_response(_emu(request).identity.to_json())


@routes.post("/_admin/identity")
async def set_identity(request: web.Request) -> web.Response:
    emu = _emu(request)
    try:
        emu.identity.configure(await _json(request))
    except ValueError as exc:
        raise _bad(str(exc)) from exc
    return json_response(emu.identity.to_json())


@routes.get("/_admin/faults")
async def list_faults(request: web.Request) -> web.Response:
    return json_response(_emu(request).faults.to_json())


@routes.post("/_admin/faults")
async def add_fault(request: web.Request) -> web.Response:
    try:
        fault = _emu(request).faults.add(await _json(request))
    except ValueError as exc:
        raise _bad(str(exc)) from exc
    return json_response(fault.to_json(), 201)


@routes.delete("/_admin/faults")
async def clear_faults(request: web.Request) -> web.Response:
    _emu(request).faults.clear()
    return web.Response(status=204)


@routes.get("/_admin/config")
async def get_config(request: web.Request) -> web.Response:
    return json_response(_emu(request).config.runtime_json())


@routes.post("/_admin/config")
async def set_config(request: web.Request) -> web.Response:
    emu = _emu(request)
    try:
        if emu.config.apply_json(await _json(request)):
            emu.throttler.reconfigure(emu.config.throttle)
    except ValueError as exc:
        raise _bad(str(exc)) from exc
    return json_response(emu.config.runtime_json())


@routes.get("/_admin/requests")
async def get_requests(request: web.Request) -> web.Response:
    try:
        since = int(request.query.get("since", "0"))
    except ValueError as exc:
        raise _bad("since must be an integer") from exc
    return json_response(_emu(request).log.since(since))


@routes.delete("/_admin/requests")
async def clear_requests(request: web.Request) -> web.Response:
    _emu(request).log.clear()
    return web.Response(status=204)


@routes.get("/_admin/stats")
async def stats(request: web.Request) -> web.Response:
    return json_response(_emu(request).log.stats())


@routes.get("/_admin/operations")
async def operations(request: web.Request) -> web.Response:
    return json_response(_emu(request).operations.to_json())


@routes.post("/_admin/reset")
async def reset(request: web.Request) -> web.Response:
    _emu(request).reset()
    return web.Response(status=204)


@routes.get("/_admin/computes")
async def list_computes(request: web.Request) -> web.Response:
    return json_response(
        [
            {
                "subscriptionId": c.subscription,
                "resourceGroup": c.resource_group,
                "workspace": c.workspace,
                "busy": c.operation_id is not None,
                "compute": c.to_json(),
            }
            for c in _emu(request).store.computes.values()
        ]
    )


def _planted(emu: Emulator, request: web.Request, data: Any) -> Compute:
    m = request.match_info
    try:
        ws = emu.store.workspace(m["sub"], m["rg"], m["ws"])
    except ArmError as exc:
        raise _bad(f"workspace not seeded: {exc.message}", 404) from exc
    if not isinstance(data, dict) or not isinstance(data.get("properties"), dict):
        raise _bad("body must be a compute: {location?, tags?, properties: {computeType, ...}}")
    props = data["properties"]
    if not isinstance(props.get("computeType"), str):
        raise _bad("properties.computeType is required")
    tags = data.get("tags")
    if tags is not None and not isinstance(tags, dict):
        raise _bad("tags must be an object or null")
    location = data.get("location", ws.location)
    if not isinstance(location, str):
        raise _bad("location must be a string")
    now = utc_now_iso()
    defaults: dict[str, Any] = {
        "computeLocation": normalize_location(ws.location),
        "provisioningState": "Succeeded",
        "provisioningErrors": None,
        "description": None,
        "createdOn": now,
        "modifiedOn": now,
        "resourceId": None,
        "isAttachedCompute": True,
    }
    return Compute(
        ws.subscription,
        ws.resource_group,
        ws.name,
        m["name"],
        location,
        tags,
        {**defaults, **props},
    )


@routes.put("/_admin/computes/{sub}/{rg}/{ws}/{name}")
async def plant_compute(request: web.Request) -> web.Response:
    """Put a compute in place out of band, replacing any compute of that name."""
    emu = _emu(request)
    compute = _planted(emu, request, await _json(request))
    emu.store.put_compute(compute)
    return json_response(compute.to_json())


@routes.delete("/_admin/computes/{sub}/{rg}/{ws}/{name}")
async def remove_compute(request: web.Request) -> web.Response:
    """An out-of-band detach: the compute disappears at once."""
    m = request.match_info
    key = tuple(m[k].lower() for k in ("sub", "rg", "ws", "name"))
    removed = _emu(request).store.remove_compute(key)
    return json_response({"deleted": removed is not None})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_routes(routes)
