"""Probes and metrics over HTTP: `/healthz`, `/readyz` and `/metrics`.

Liveness says the process is alive: its event loop answers and no workspace loop is wedged in
one pass (every await in a pass is bounded by a timeout, so a pass that runs for many minutes
is a bug, not load). Readiness says it can work: kopf's watch has handed over the objects that
existed at start, the Kubernetes API answered recently, and ARM answered. Probe requests write
no access log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from batchcompute_operator import metrics
from batchcompute_operator.runtime import Runtime, resource_path

log = logging.getLogger(__name__)

STUCK_PASS_SECONDS = 600.0
FRESH_SECONDS = 90.0  # how recent an answer from each API must be for readiness
PROBE_EVERY = 30.0
LEADER_NAME = "batchcompute-operator"


class Census(Collector):
    """Attachments by state and Ready status, counted at scrape time from the engine, and
    whether this replica is the one acting (controller-runtime's leader gauge).

    A replica standing by reports no attachments: what it knows is as old as its pause, and
    summing over every replica of an HA pair must count each attachment once.
    """

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[GaugeMetricFamily]:
        active = self._runtime.gate.active.is_set()
        leader = GaugeMetricFamily(
            "leader_election_master_status",
            "1 while this replica acts (standalone, or the active one of an HA pair), "
            "0 while it stands by", labels=["name"])
        leader.add_metric([LEADER_NAME], 1 if active else 0)
        yield leader
        family = GaugeMetricFamily("batchcompute_attachments",
                                   "Attachments by provisioning state and Ready status",
                                   labels=["state", "ready"])
        unverified = GaugeMetricFamily(
            "batchcompute_attachments_unverified",
            "Attachments not yet compared with ARM since this process started")
        if active:
            for (state, ready), count in sorted(self._runtime.engine.census().items()):
                family.add_metric([state, ready], count)
            unverified.add_metric([], self._runtime.engine.unverified)
        yield family
        yield unverified


class HealthServer:
    def __init__(self, runtime: Runtime, *, started: asyncio.Event) -> None:
        self.runtime = runtime
        self._started = started
        self._runners: list[web.AppRunner] = []
        self._prober: asyncio.Task[None] | None = None
        self._census = Census(runtime)
        self._existing: int | None = None  # objects there were when the operator started
        self._since = time.monotonic()

    async def start(self) -> None:
        settings = self.runtime.settings
        metrics.max_concurrent.labels(metrics.CONTROLLER).set(settings.loop_workers)
        with contextlib.suppress(ValueError):  # registered once per process
            metrics.REGISTRY.register(self._census)
        routes = {"/healthz": self.healthz, "/readyz": self.readyz}
        if settings.metrics_port and settings.metrics_port == settings.health_port:
            routes["/metrics"] = self.metrics
        if settings.health_port:
            await self._serve(settings.health_port, routes)
        if settings.metrics_port and settings.metrics_port != settings.health_port:
            await self._serve(settings.metrics_port, {"/metrics": self.metrics})
        self._prober = asyncio.create_task(self._probe(), name="readiness prober")

    async def _serve(self, port: int, routes: dict[str, Any]) -> None:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", port).start()  # noqa: S104 - probes come from the kubelet
        self._runners.append(runner)

    async def stop(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
        for runner in self._runners:
            await runner.cleanup()

    async def _probe(self) -> None:
        """One cheap call to each API when nothing else has shown it is there.

        The Kubernetes API is asked for at most one object every half minute while the
        engine writes nothing; ARM is asked (with no token) until it first answers, and again
        only after a request to it got no answer.
        """
        rt = self.runtime
        while True:
            now = time.monotonic()
            if now - rt.kube.last_success > PROBE_EVERY or self._existing is None:
                with contextlib.suppress(Exception):
                    count = 0
                    for namespace in rt.settings.namespaces or (None,):
                        resp = await rt.kube.request("GET", resource_path(namespace),
                                                     params={"limit": "1"})
                        body = resp.json() or {}
                        count += len(body.get("items") or []) + int(
                            (body.get("metadata") or {}).get("remainingItemCount") or 0)
                    if self._existing is None:
                        self._existing = count
            if not rt.client.reachable:
                await rt.client.probe()
            await asyncio.sleep(PROBE_EVERY / 3)

    async def healthz(self, _: web.Request) -> web.Response:
        stuck = self.runtime.engine.stuck_loops(STUCK_PASS_SECONDS)
        if stuck:
            return web.json_response({"ok": False, "stuck": stuck[:10]}, status=500)
        return web.json_response({"ok": True})

    def watching(self) -> bool:
        """kopf's watch has handed over the objects that existed at start (its listing).

        Objects deleted meanwhile never arrive, so after a minute the listing counts as done.
        """
        if self._existing is None:
            return False
        return self.runtime.engine.listed >= self._existing or \
            time.monotonic() - self._since > 60

    async def readyz(self, _: web.Request) -> web.Response:
        rt, now = self.runtime, time.monotonic()
        checks = {
            "started": self._started.is_set(),
            "watching": self.watching(),
            "kubernetes": now - rt.kube.last_success < FRESH_SECONDS,
            "arm": rt.client.reachable,
        }
        ok = all(checks.values())
        return web.json_response({"ok": ok, **checks}, status=200 if ok else 503)

    async def metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
