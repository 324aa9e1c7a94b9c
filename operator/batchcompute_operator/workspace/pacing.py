"""Per-subscription pacing: our own copy of ARM's token buckets, shared by the whole process.

ARM throttles each subscription (and principal) with token buckets and answers 429 once a
bucket is empty. Waiting for a token here instead costs nothing on ARM's side, keeps the
429 fraction near zero, and lets one subscription's burst not starve another's. The
buckets start from ARM's published figures and follow the `x-ms-ratelimit-remaining-*`
headers, so a second client sharing the subscription slows us down too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from batchcompute_operator import metrics
from batchcompute_operator.config import ARM_DEFAULTS, KINDS, BucketFigures, Kind

__all__ = ["ARM_DEFAULTS", "BucketFigures", "Kind", "SubscriptionPacer", "TokenBucket"]


class TokenBucket:
    """A token bucket whose waiters are served in arrival order."""

    def __init__(self, figures: BucketFigures, *, safety: float = 0.0) -> None:
        self.capacity = max(1.0, figures.capacity - safety)
        self.rate = figures.refill_per_second
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self.blocked_until = 0.0
        self._lock = asyncio.Lock()

    def refill(self) -> None:
        self._refill(time.monotonic())

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    async def acquire(self) -> float:
        """Take one token, waiting as long as needed; returns the seconds waited."""
        started = time.monotonic()
        async with self._lock:
            while True:
                now = time.monotonic()
                self._refill(now)
                if now < self.blocked_until:
                    await asyncio.sleep(self.blocked_until - now)
                    continue
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return time.monotonic() - started
                await asyncio.sleep((1.0 - self.tokens) / self.rate)

    def observe_remaining(self, remaining: int) -> None:
        """ARM's count is the truth when it is lower than ours (someone else shares it)."""
        self._refill(time.monotonic())
        self.tokens = min(self.tokens, float(remaining))

    def block_for(self, seconds: float, *, empty: bool = True) -> None:
        """Hold every caller for `seconds`; `empty` also drains the bucket (it was throttled)."""
        self.blocked_until = max(self.blocked_until, time.monotonic() + seconds)
        if empty:
            self.tokens = 0.0


class SubscriptionPacer:
    """One set of buckets per subscription and principal; the only place ARM calls are paced.

    Callers name the budget as "<subscription>|<principal>", ARM's own throttling unit.
    """

    def __init__(self, figures: Mapping[Kind, BucketFigures] = ARM_DEFAULTS,
                 *, enabled: bool = True, safety: float = 5.0) -> None:
        self._figures = figures
        self._enabled = enabled
        self._safety = safety
        self._buckets: dict[tuple[str, Kind], TokenBucket] = {}

    def bucket(self, subscription: str, kind: Kind) -> TokenBucket:
        key = (subscription.lower(), kind)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._figures[kind], safety=self._safety)
        return bucket

    async def acquire(self, subscription: str, kind: Kind) -> float:
        if not self._enabled:
            return 0.0
        bucket = self.bucket(subscription, kind)
        waited = await bucket.acquire()
        self._report(kind)
        return waited

    def level(self, subscription: str, kind: Kind) -> float:
        """The fraction of this bucket's capacity left now (1.0 when pacing is off)."""
        if not self._enabled:
            return 1.0
        bucket = self.bucket(subscription, kind)
        bucket.refill()
        return bucket.tokens / bucket.capacity

    def _report(self, kind: Kind) -> None:
        lowest = min((b.tokens for (_, k), b in self._buckets.items() if k == kind),
                     default=0.0)
        metrics.pacing_tokens.labels(kind).set(max(0.0, lowest))

    def observe(self, subscription: str, kind: Kind, remaining: int | None,
                retry_after: float | None) -> None:
        if not self._enabled:
            return
        bucket = self.bucket(subscription, kind)
        if remaining is not None:
            bucket.observe_remaining(remaining)
        if retry_after is not None:
            for each in KINDS:
                self.bucket(subscription, each).block_for(retry_after, empty=each == kind)
