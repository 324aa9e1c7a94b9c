"""Bulk observation: one paged LIST per workspace, shared by every resource in it.

Resources ask for a snapshot "no older than" a moment. Requests that arrive while a LIST
is running join it; requests satisfied by the last snapshot cost nothing. This is what
keeps reads per attach below one and idle resyncs at one LIST page per workspace.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from batchcompute_operator.spec import WorkspaceRef
from batchcompute_operator.workspace.api import WorkspaceApi
from batchcompute_operator.workspace.models import ComputeView


@dataclass(frozen=True)
class Snapshot:
    started: float  # monotonic time the LIST was sent: nothing older than this is missed
    computes: dict[str, ComputeView]

    def get(self, name: str) -> ComputeView | None:
        return self.computes.get(name.lower())


class WorkspaceObserver:
    def __init__(self, api: WorkspaceApi) -> None:
        self._api = api
        self._latest: dict[tuple[str, str, str], Snapshot] = {}
        self._running: dict[tuple[str, str, str], tuple[float, asyncio.Task[Snapshot]]] = {}
        self.lists = 0

    async def snapshot(self, ws: WorkspaceRef, not_before: float) -> Snapshot:
        """A snapshot whose LIST started at or after `not_before` (monotonic seconds)."""
        while True:
            latest = self._latest.get(ws.key)
            if latest is not None and latest.started >= not_before:
                return latest
            running = self._running.get(ws.key)
            if running is not None and running[1].done():
                self._done(ws.key, running)
                running = None
            if running is None:
                started = time.monotonic()
                task = asyncio.create_task(self._list(ws, started))
                running = self._running[ws.key] = (started, task)
            started, task = running
            snap = await asyncio.shield(task)
            if started >= not_before:
                return snap

    def _done(self, key: tuple[str, str, str],
              running: tuple[float, asyncio.Task[Snapshot]]) -> None:
        if self._running.get(key) is running:
            del self._running[key]

    async def _list(self, ws: WorkspaceRef, started: float) -> Snapshot:
        computes = await self._api.list_computes(ws)
        self.lists += 1
        snap = Snapshot(started, computes)
        current = self._latest.get(ws.key)
        if current is None or current.started <= started:
            self._latest[ws.key] = snap
        return snap

    def forget(self, ws: WorkspaceRef) -> None:
        self._latest.pop(ws.key, None)
