"""Bulk observation: one paged LIST per workspace, shared by every resource in it.

Snapshots are kept per principal as well as per workspace: what one tenant's identity may
see is never used to decide for another's. Resources ask for a snapshot "no older than" a
moment. Requests that arrive while a LIST
is running join it; requests satisfied by the last snapshot cost nothing. This is what
keeps reads per attach below one and idle resyncs at one LIST page per workspace.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from batchcompute_operator.spec import WorkspaceRef
from batchcompute_operator.workspace.api import WorkspaceApi
from batchcompute_operator.workspace.client import TokenGetter
from batchcompute_operator.workspace.models import ComputeView

Key = tuple[str, str, str, str]  # principal, subscription, resource group, workspace


@dataclass(frozen=True)
class Snapshot:
    started: float  # monotonic time the LIST was sent: nothing older than this is missed
    computes: dict[str, ComputeView]

    def get(self, name: str) -> ComputeView | None:
        return self.computes.get(name.lower())


class WorkspaceObserver:
    def __init__(self, api: WorkspaceApi) -> None:
        self._api = api
        self._latest: dict[Key, Snapshot] = {}
        self._running: dict[Key, tuple[float, asyncio.Task[Snapshot]]] = {}
        self.lists = 0

    async def snapshot(self, ws: WorkspaceRef, not_before: float,
                       auth: TokenGetter | None = None) -> Snapshot:
        """A snapshot whose LIST started at or after `not_before` (monotonic seconds)."""
        key: Key = (auth.key if auth else "", *ws.key)
        while True:
            latest = self._latest.get(key)
            if latest is not None and latest.started >= not_before:
                return latest
            running = self._running.get(key)
            if running is not None and running[1].done():
                self._done(key, running)
                running = None
            if running is None:
                started = time.monotonic()
                task = asyncio.create_task(self._list(key, ws, started, auth))
                running = self._running[key] = (started, task)
            started, task = running
            snap = await asyncio.shield(task)
            if started >= not_before:
                return snap

    def _done(self, key: Key, running: tuple[float, asyncio.Task[Snapshot]]) -> None:
        if self._running.get(key) is running:
            del self._running[key]

    async def _list(self, key: Key, ws: WorkspaceRef, started: float,
                    auth: TokenGetter | None) -> Snapshot:
        computes = await self._api.list_computes(ws, auth)
        self.lists += 1
        snap = Snapshot(started, computes)
        current = self._latest.get(key)
        if current is None or current.started <= started:
            self._latest[key] = snap
        return snap
