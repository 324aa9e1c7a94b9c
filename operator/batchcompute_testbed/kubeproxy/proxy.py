"""A fault-injecting HTTPS proxy in front of the kube-apiserver.

The client under test (the operator) gets a kubeconfig that points here; everything else (the
tests' admin client) keeps talking to the API server directly. The proxy terminates TLS with a
certificate of its own throw-away CA and forwards each request to the API server on a TLS
connection of its own, with the client's headers, so a bearer token passes through unchanged
(a client certificate cannot: the proxy does not hold its key). Answers are passed back as the
API server sent them (compressed bodies stay compressed); watch streams are relayed as their
bytes arrive.

It runs on an event loop in a thread of its own and is driven from the caller's thread:

    proxy = KubeProxy(server, ca_file, tls_dir).start()
    kubeconfig = proxy.kubeconfig(operator_kubeconfig, tmp / "operator-via-proxy.kubeconfig")
    proxy.fail(*STATUS_PATCH, status=503)       # every status patch answered 503
    proxy.stall_watches()                       # watches stay open and go silent
    proxy.pause(refuse=True)                    # the API server is gone: connections refused
    proxy.clear()                               # all faults off, a paused proxy resumes

Faults never touch the API server's own state: a request the proxy answers, resets or holds
back never reaches it, except under `lose_response`, which forwards first and then cuts the
answer. When a held request's client gives up, the proxy drops the request too. `clear()` and
`remove()` release held and delayed requests at once: the API server is fast again. A watch
that stalled stays silent after its rule is cleared, as a half-open connection does, until its
client gives up on it; new watches flow.

`requests()` is the log of everything the proxy saw, with the fault that met each request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from batchcompute_testbed.emulator.tls import server_ssl_context
from batchcompute_testbed.kubeproxy.faults import Action, Rule

T = TypeVar("T")

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
})
LOG_LIMIT = 50_000
CALL_TIMEOUT = 10.0  # seconds the caller's thread waits for the proxy's loop to do something


@dataclass
class Entry:
    """One request as the proxy saw it."""

    seq: int
    time: float  # wall clock when it arrived
    method: str
    path: str
    watch: bool
    status: int | None = None  # what the client got; None: reset, cut or abandoned
    fault: str | None = None
    forwarded: bool = False  # whether the API server got it
    seconds: float = 0.0  # until the answer was complete (watches: until the stream ended)


@dataclass(eq=False)
class _Watch:
    path: str
    started: float  # monotonic
    transport: asyncio.BaseTransport | None
    stalled: bool = False
    cut_timer: asyncio.TimerHandle | None = None


@dataclass
class _State:
    rules: list[Rule] = field(default_factory=list)
    released: dict[int, asyncio.Event] = field(default_factory=dict)  # per rule: removed
    watches: set[_Watch] = field(default_factory=set)


def _is_watch(request: web.BaseRequest) -> bool:
    return request.query.get("watch", "").lower() in ("true", "1")


def reset_connection(transport: asyncio.BaseTransport | None) -> None:
    """Close a connection with a TCP reset (SO_LINGER 0), the way a crashed peer does."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if isinstance(transport, asyncio.Transport):
        transport.abort()
    else:
        transport.close()


class KubeProxy:
    def __init__(self, upstream: str, upstream_ca: Path | str, tls_dir: Path | str, *,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.upstream_ca = Path(upstream_ca)
        self.tls_dir = Path(tls_dir)
        self.host = host
        self.port = port
        self.ca_file: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._state = _State()
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        self._log: deque[Entry] = deque(maxlen=LOG_LIMIT)
        self._log_lock = threading.Lock()
        # Set while requests flow; cleared by pause(). Created on the proxy's loop.
        self._flowing: asyncio.Event | None = None
        self._refusing = False
        self._server: asyncio.Server | None = None
        self._web: web.Server | None = None
        self._session: aiohttp.ClientSession | None = None
        self._server_ssl: ssl.SSLContext | None = None

    # -- life cycle (caller's thread) ----------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> KubeProxy:
        if self._thread is not None:
            raise RuntimeError("the proxy is already running")
        started: Future[None] = Future()
        self._thread = threading.Thread(target=self._main, args=(started,), name="kube proxy",
                                        daemon=True)
        self._thread.start()
        started.result(timeout=CALL_TIMEOUT)
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=CALL_TIMEOUT)
        self._thread = None

    def __enter__(self) -> KubeProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def kubeconfig(self, source: Path | str, dest: Path | str) -> Path:
        """A copy of the kubeconfig `source` whose clusters are reached through this proxy."""
        if self.ca_file is None:
            raise RuntimeError("start the proxy first")
        doc = yaml.safe_load(Path(source).read_text())
        for user in doc.get("users") or []:
            creds = user.get("user") or {}
            if "client-certificate-data" in creds or "client-certificate" in creds:
                raise ValueError(f"user {user.get('name')!r} authenticates with a client "
                                 "certificate, which cannot pass a TLS-terminating proxy")
        ca = base64.b64encode(self.ca_file.read_bytes()).decode()
        for cluster in doc.get("clusters") or []:
            settings = cluster.setdefault("cluster", {})
            settings["server"] = self.url
            settings.pop("certificate-authority", None)
            settings.pop("insecure-skip-tls-verify", None)
            settings["certificate-authority-data"] = ca
        path = Path(dest)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        path.chmod(0o600)
        return path

    # -- faults (caller's thread) --------------------------------------------------------------

    def add(self, rule: Rule) -> int:
        rule.id = next(self._ids)
        self._call(lambda: self._add(rule))
        return rule.id

    def fail(self, method: str, path: str, *, status: int = 503, count: int | None = None,
             retry_after: int | None = None, reason: str | None = None,
             message: str | None = None) -> int:
        """Answer matching requests with `status` (a metav1.Status body) instead of forwarding."""
        extra: dict[str, Any] = {}
        if reason is not None:
            extra["reason"] = reason
        if message is not None:
            extra["message"] = message
        return self.add(Rule(Action.STATUS, frozenset({method}), path, status=status,
                             retry_after=retry_after, count=count, **extra))

    def reset(self, method: str, path: str, *, count: int | None = None) -> int:
        """Reset the connection of matching requests before they reach the API server."""
        return self.add(Rule(Action.RESET, frozenset({method}), path, count=count))

    def lose_response(self, method: str, path: str, *, count: int | None = None) -> int:
        """Forward matching requests, then reset the connection instead of answering."""
        return self.add(Rule(Action.LOSE, frozenset({method}), path, count=count))

    def delay(self, method: str, path: str, seconds: float, *, count: int | None = None) -> int:
        """Hold matching requests `seconds` before forwarding them."""
        return self.add(Rule(Action.DELAY, frozenset({method}), path, seconds=seconds,
                             count=count))

    def stall_watches(self, path: str = "") -> int:
        """Watch streams (open and new) keep their connection and send nothing more."""
        return self.add(Rule(Action.STALL, path=path))

    def cut_watches(self, after: float, path: str = "", *, count: int | None = None) -> int:
        """Reset every watch stream's connection `after` seconds after it began (streams open
        longer than that: now), as often as clients open new ones."""
        return self.add(Rule(Action.CUT, path=path, seconds=after, count=count))

    def remove(self, rule_id: int) -> None:
        self._call(lambda: self._remove(rule_id))

    def pause(self, *, refuse: bool = False) -> None:
        """Stop answering. Hold every request (and every watch's next bytes) until `resume()`,
        or with `refuse`: stop listening and reset every open connection, as a stopped API
        server does."""
        if refuse:
            self._run(self._refuse())
        else:
            self._call(self._hold)

    def resume(self) -> None:
        self._run(self._resume())

    def clear(self) -> None:
        """Remove every rule and resume: nothing is injected any more."""
        for rule_id in self._call(lambda: [r.id for r in self._state.rules]):
            self.remove(rule_id)
        self.resume()

    def rules(self) -> list[Rule]:
        return self._call(lambda: list(self._state.rules))

    def open_watches(self) -> int:
        return self._call(lambda: len(self._state.watches))

    def requests(self, since: int = 0) -> list[Entry]:
        with self._log_lock:
            return [e for e in self._log if e.seq > since]

    def last_seq(self) -> int:
        with self._log_lock:
            return self._log[-1].seq if self._log else 0

    # -- bridging threads ----------------------------------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the proxy's loop and return its result."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the proxy is not running")
        done: Future[T] = Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed back to the caller's thread
                done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return done.result(timeout=CALL_TIMEOUT)

    def _run(self, coro: Any) -> Any:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the proxy is not running")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=CALL_TIMEOUT)

    # -- the proxy's loop ----------------------------------------------------------------------

    def _main(self, started: Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._open())
        except BaseException as exc:
            started.set_exception(exc)
            loop.close()
            self._loop = None
            return
        started.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._close())
            loop.close()
            self._loop = None

    async def _open(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server_ssl, ca_file = server_ssl_context(self.tls_dir, self.host)
        self.ca_file = ca_file
        upstream_ssl = ssl.create_default_context(cafile=str(self.upstream_ca))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=upstream_ssl, limit=0),
            auto_decompress=False,  # pass compressed bodies through as they are
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        )
        self._web = web.Server(self._handle, handler_cancellation=True, access_log=None)
        await self._listen()

    async def _listen(self) -> None:
        assert self._web is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._web, self.host, self.port,
                                                ssl=self._server_ssl, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._abort_connections()
        if self._session is not None:
            await self._session.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _abort_connections(self) -> None:
        if self._web is None:
            return
        for handler in self._web.connections:
            reset_connection(handler.transport)

    def _add(self, rule: Rule) -> None:
        self._state.rules.append(rule)
        self._state.released[rule.id] = asyncio.Event()
        if rule.action is Action.CUT:
            for watch in self._state.watches:
                self._schedule_cut(watch)

    def _remove(self, rule_id: int) -> None:
        self._state.rules = [r for r in self._state.rules if r.id != rule_id]
        released = self._state.released.pop(rule_id, None)
        if released is not None:
            released.set()
        for watch in self._state.watches:
            self._schedule_cut(watch)

    def _hold(self) -> None:
        assert self._flowing is not None
        self._flowing.clear()

    async def _refuse(self) -> None:
        self._refusing = True
        if self._server is not None:
            self._server.close()
            self._server = None
        self._abort_connections()

    async def _resume(self) -> None:
        assert self._flowing is not None
        if self._refusing:
            self._refusing = False
            await self._listen()
        self._flowing.set()

    def _match(self, method: str, path: str, watch: bool) -> Rule | None:
        for rule in self._state.rules:
            if rule.matches(method, path, watch):
                return rule
        return None

    # -- one request ---------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self._flowing is not None
        watch = _is_watch(request)
        entry = Entry(next(self._seq), time.time(), request.method, request.path, watch)
        with self._log_lock:
            self._log.append(entry)
        began = time.monotonic()
        try:
            if self._refusing:
                return await self._drop(request)
            await self._flowing.wait()
            rule = None if watch else self._match(request.method, request.path, False)
            if rule is not None:
                rule.use()
                entry.fault = rule.describe()
                if rule.action is Action.STATUS:
                    entry.status = rule.status
                    return self._answer(rule)
                if rule.action is Action.RESET:
                    return await self._drop(request)
                if rule.action is Action.DELAY:
                    released = self._state.released.get(rule.id)
                    if released is not None:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(released.wait(), timeout=rule.seconds)
            body = await request.read()
            await self._flowing.wait()
            if self._refusing:
                return await self._drop(request)
            if watch:
                return await self._relay_watch(request, body, entry)
            return await self._forward(request, body, entry,
                                       lose=rule is not None and rule.action is Action.LOSE)
        finally:
            entry.seconds = time.monotonic() - began

    async def _drop(self, request: web.BaseRequest) -> web.StreamResponse:
        """Reset the client's connection; the handler ends when aiohttp notices."""
        reset_connection(request.transport)
        await asyncio.sleep(CALL_TIMEOUT)  # cancelled as the connection goes
        raise ConnectionResetError("connection reset by the fault proxy")

    @staticmethod
    def _answer(rule: Rule) -> web.Response:
        headers = {"Content-Type": "application/json"}
        if rule.retry_after is not None:
            headers["Retry-After"] = str(rule.retry_after)
        return web.Response(status=rule.status, headers=headers,
                            body=json.dumps(rule.status_body()).encode())

    def _upstream_headers(self, request: web.BaseRequest) -> CIMultiDict[str]:
        return CIMultiDict((k, v) for k, v in request.headers.items()
                           if k.lower() not in HOP_BY_HOP)

    @staticmethod
    def _downstream_headers(headers: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
        return CIMultiDict((k, v) for k, v in headers if k.lower() not in HOP_BY_HOP)

    async def _send(self, request: web.BaseRequest, body: bytes,
                    entry: Entry) -> aiohttp.ClientResponse | None:
        assert self._session is not None
        try:
            upstream = await self._session.request(
                request.method, URL(self.upstream + request.raw_path, encoded=True),
                headers=self._upstream_headers(request), data=body or None,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
                allow_redirects=False)
        except (aiohttp.ClientError, OSError):
            return None  # the API server is not there: the client sees its connection go
        entry.forwarded = True
        return upstream

    async def _forward(self, request: web.BaseRequest, body: bytes, entry: Entry, *,
                       lose: bool) -> web.StreamResponse:
        upstream = await self._send(request, body, entry)
        if upstream is None:
            return await self._drop(request)
        async with upstream:
            try:
                data = await upstream.read()
            except (aiohttp.ClientError, OSError):
                return await self._drop(request)
            if lose:
                return await self._drop(request)
            entry.status = upstream.status
            return web.Response(status=upstream.status, body=data,
                                headers=self._downstream_headers(upstream.headers.items()))

    async def _relay_watch(self, request: web.BaseRequest, body: bytes,
                           entry: Entry) -> web.StreamResponse:
        assert self._flowing is not None
        upstream = await self._send(request, body, entry)
        if upstream is None:
            return await self._drop(request)
        watch = _Watch(request.path, time.monotonic(), request.transport)
        self._state.watches.add(watch)
        self._schedule_cut(watch)
        try:
            async with upstream:
                response = web.StreamResponse(
                    status=upstream.status,
                    headers=self._downstream_headers(upstream.headers.items()))
                await response.prepare(request)
                entry.status = upstream.status
                async for chunk in upstream.content.iter_any():
                    if watch.stalled or self._stalls(watch):
                        watch.stalled = True
                        entry.fault = "stall"
                        await asyncio.Future()  # silent until the client goes
                    await self._flowing.wait()
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, OSError):
            return await self._drop(request)
        finally:
            self._state.watches.discard(watch)
            if watch.cut_timer is not None:
                watch.cut_timer.cancel()

    def _stalls(self, watch: _Watch) -> bool:
        rule = self._watch_rule(watch, Action.STALL)
        if rule is None:
            return False
        rule.use()
        return True

    def _watch_rule(self, watch: _Watch, action: Action) -> Rule | None:
        for rule in self._state.rules:
            if rule.action is action and rule.matches("GET", watch.path, True):
                return rule
        return None

    def _schedule_cut(self, watch: _Watch) -> None:
        if watch.cut_timer is not None:
            watch.cut_timer.cancel()
            watch.cut_timer = None
        rule = self._watch_rule(watch, Action.CUT)
        if rule is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, watch.started + rule.seconds - time.monotonic())

        def cut() -> None:
            if watch in self._state.watches and rule in self._state.rules:
                rule.use()
                self._state.watches.discard(watch)
                reset_connection(watch.transport)

        watch.cut_timer = loop.call_later(delay, cut)
