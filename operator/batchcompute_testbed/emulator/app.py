"""The aiohttp application: one pipeline in front of every ARM and regional API request.

Order per request: latency, injected fault, authentication, throttling, api-version, handler.
Faults come first because they stand for the network and gateways in front of ARM. Requests to
the workspace's regional API host (`/rp/workspaces/...`) take the same pipeline except ARM's
throttling, which meters only what passes through ARM.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from aiohttp import web

from . import admin, handlers
from .arm import ArmError, Route, error_body, json_response, match_route, method_kind
from .config import SUBSCRIPTION_API_VERSIONS, ThrottleConfig
from .faults import Fault
from .requestlog import Entry
from .runtime import EMULATOR, STOPPING, Emulator
from .throttle import remaining_header

log = logging.getLogger("batchcompute_testbed.emulator")

Handler = Callable[[Emulator, web.Request, Route, str], Awaitable[web.Response]]
_DISPATCH: dict[tuple[str, str], Handler] = {
    ("subscriptions", "GET"): handlers.list_subscriptions,
    ("subscription", "GET"): handlers.get_subscription,
    ("workspace", "GET"): handlers.get_workspace,
    ("list", "GET"): handlers.list_computes,
    ("compute", "GET"): handlers.get_compute,
    ("compute", "PUT"): handlers.put_compute,
    ("compute", "DELETE"): handlers.delete_compute,
    ("operation", "GET"): handlers.get_operation_status,
    ("result", "GET"): handlers.get_operation_result,
}
_FULL_BUCKETS = ThrottleConfig()


class _Dropped(Exception):
    """The connection was cut on purpose; there is no answer to send."""


def _parse_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def _drop(request: web.Request) -> NoReturn:
    if request.transport is not None:
        request.transport.abort()
    raise _Dropped


async def _stall(request: web.Request, seconds: float) -> None:
    """Hold the request; if the client gives up meanwhile, abandon it unprocessed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        transport = request.transport
        if transport is None or transport.is_closing() or request.app[STOPPING].is_set():
            raise _Dropped
        await asyncio.sleep(min(left, 0.05))


async def _apply_fault(request: web.Request, fault: Fault) -> web.Response | None:
    """Carry out a request fault; None means "go on and answer normally"."""
    action = fault.action
    if "stall_seconds" in action:
        await _stall(request, float(action["stall_seconds"]))
        return _drop(request) if action.get("close") else None
    if action.get("close"):
        return _drop(request)
    status = int(action["status"])
    headers = {str(k): str(v) for k, v in (action.get("headers") or {}).items()}
    if action.get("retry_after") is not None:
        headers["Retry-After"] = str(action["retry_after"])
    if "raw" in action:
        return web.Response(
            status=status, text=action["raw"], content_type="text/plain", headers=headers
        )
    body = action.get("body")
    if body is None:
        body = error_body("InjectedFault", f"Injected fault: HTTP {status}.")
    return json_response(body, status, headers)


async def _arm(emu: Emulator, request: web.Request, route: Route, entry: Entry) -> web.Response:
    if emu.config.latency_ms > 0:
        await asyncio.sleep(emu.config.latency_ms / 1000)
    fault = emu.faults.take_request_fault(
        request.method, route.path, frozenset({entry.kind, entry.target})
    )
    if fault is not None:
        entry.fault = fault.action_type
        faulted = await _apply_fault(request, fault)
        if faulted is not None:
            return faulted
    auth = emu.tokens.check(request.headers.get("Authorization"))
    entry.auth, entry.principal = auth.state, auth.principal
    if auth.error is not None:
        return auth.error.response()
    if route.subscription is not None and not route.regional:
        verdict = emu.throttler.take(route.subscription, entry.kind)
        if not verdict.allowed:
            entry.throttled = True
            return ArmError(
                429,
                "SubscriptionRequestsThrottled",
                f"Number of '{entry.kind}' requests for subscription '{route.subscription}' "
                f"exceeded. Please try again after '{verdict.retry_after}' seconds.",
                {"Retry-After": str(verdict.retry_after)},
            ).response()
    api_version = request.query.get("api-version")
    if not api_version:
        raise ArmError(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )
    # Subscriptions belong to Microsoft.Resources, whose versions are not the ML provider's.
    supported = (
        SUBSCRIPTION_API_VERSIONS
        if route.target in ("subscriptions", "subscription")
        else emu.config.api_versions
    )
    if api_version not in supported:
        raise ArmError(
            400,
            "InvalidApiVersionParameter",
            f"The api-version '{api_version}' is invalid. The supported versions are "
            f"'{','.join(sorted(supported))}'.",
        )
    if route.target == "unknown":
        raise ArmError(404, "InvalidResourceType", f"No resource type is served at '{route.path}'.")
    # The regional API host is read-only here: SDK v1 writes through ARM.
    method_ok = not route.regional or request.method == "GET"
    handler = _DISPATCH.get((route.target, request.method)) if method_ok else None
    if handler is None:
        raise ArmError(
            405,
            "MethodNotAllowed",
            f"The method '{request.method}' is not allowed on this resource.",
        )
    return await handler(emu, request, route, api_version)


def _remaining(emu: Emulator, route: Route, kind: str) -> str:
    remaining = emu.throttler.peek(route.subscription, kind) if route.subscription else None
    if remaining is None:
        spec = {"read": _FULL_BUCKETS.reads, "write": _FULL_BUCKETS.writes}.get(
            kind, _FULL_BUCKETS.deletes
        )
        remaining = int(spec.bucket)
    return str(remaining)


async def arm_entry(request: web.Request) -> web.StreamResponse:
    """Every request outside /_admin and /msi: recorded, then run through the pipeline."""
    emu = request.app[EMULATOR]
    route = match_route(request.path)
    raw = await request.read() if request.can_read_body else b""
    entry = emu.log.open(
        request.method,
        request.path,
        dict(request.query),
        _parse_body(raw),
        method_kind(request.method),
        route.kind_target,
        route.subscription,
    )
    try:
        try:
            response = await _arm(emu, request, route, entry)
        except ArmError as exc:
            response = exc.response()
        if route.regional:
            pass  # ARM's budget headers come from ARM, not from the regional API host
        elif not entry.throttled:
            response.headers[remaining_header(entry.kind)] = _remaining(emu, route, entry.kind)
        else:
            response.headers[remaining_header(entry.kind)] = "0"
        entry.status = response.status
        return response
    except _Dropped:
        return web.Response(status=499)  # never sent: the transport is gone
    finally:
        emu.log.close(entry)
        log.info(
            "%s %s -> %s%s",
            request.method,
            request.path,
            entry.status if entry.status is not None else "dropped",
            f" ({entry.fault})" if entry.fault else "",
        )


async def identity_token(request: web.Request) -> web.StreamResponse:
    """The managed-identity endpoint; it shares request faults and the request log."""
    emu = request.app[EMULATOR]
    entry = emu.log.open(
        request.method, request.path, dict(request.query), None, "identity", "identity", None
    )
    try:
        fault = emu.faults.take_request_fault(
            request.method, request.path, frozenset({"identity"}), explicit=True
        )
        if fault is not None:
            entry.fault = fault.action_type
            faulted = await _apply_fault(request, fault)
            if faulted is not None:
                entry.status = faulted.status
                return faulted
        status, body = emu.identity.answer(request.query, request.headers)
        entry.auth = "valid" if status == 200 else "invalid"
        entry.status = status
        return json_response(body, status)
    except _Dropped:
        return web.Response(status=499)
    finally:
        emu.log.close(entry)


async def discovery(request: web.Request) -> web.StreamResponse:
    """The workspace's discovery document. Clients fetch it without a token, as from Azure;
    it shares request faults (those naming `discovery` or its path) and the request log."""
    emu = request.app[EMULATOR]
    entry = emu.log.open(
        request.method, request.path, dict(request.query), None, "read", "discovery", None
    )
    try:
        fault = emu.faults.take_request_fault(
            request.method, request.path, frozenset({"read", "discovery"}), explicit=True
        )
        if fault is not None:
            entry.fault = fault.action_type
            faulted = await _apply_fault(request, fault)
            if faulted is not None:
                entry.status = faulted.status
                return faulted
        entry.status = 200
        return json_response(handlers.discovery_document(request))
    except _Dropped:
        return web.Response(status=499)
    finally:
        emu.log.close(entry)


async def admin_not_found(request: web.Request) -> web.Response:
    return json_response({"error": f"no admin route {request.method} {request.path}"}, 404)


async def _on_shutdown(app: web.Application) -> None:
    app[STOPPING].set()  # lets stalled requests go before the runner waits for them


def build_app(emu: Emulator) -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app[EMULATOR] = emu
    app[STOPPING] = asyncio.Event()
    app.on_shutdown.append(_on_shutdown)
    admin.add_routes(app.router)
    app.router.add_route("*", "/_admin/{tail:.*}", admin_not_found)
    app.router.add_get("/msi/token", identity_token)
    app.router.add_get("/discovery", discovery)
    app.router.add_route("*", "/{tail:.*}", arm_entry)
    return app
