"""Full garbage collections on a timer, at a bounded share of the CPU.

kopf wraps every watch event in views of its body and of its patch that refer to one
another, so an event's parsed body is freed only by the cyclic garbage collector. A body
still being handled when a younger generation is collected moves on to the oldest one, and
CPython collects that only once new objects there number a quarter of all the long-lived
ones: with 10 000 attachments, bodies that were done with long ago piled up there by the
megabyte during a burst. A full collection costs time in proportion to every object the
process holds, so the timer waits at least `every` seconds, and longer when collections
take more than `share` of that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time


class Collector:
    def __init__(self, *, every: float = 10.0, share: float = 0.05) -> None:
        self._every = every
        self._share = share
        self._task: asyncio.Task[None] | None = None
        self.runs = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="garbage collector")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def delay(self, took: float) -> float:
        """Seconds until the next collection, after one that took `took` CPU seconds."""
        return max(self._every, took / self._share)

    async def _run(self) -> None:
        wait = self._every
        while True:
            await asyncio.sleep(wait)
            # The oldest generation only gains objects when a younger one is collected;
            # when none was since the last full collection, there is nothing new to free.
            if gc.get_count()[2] == 0:
                continue
            started = time.process_time()
            gc.collect()
            self.runs += 1
            wait = self.delay(time.process_time() - started)
