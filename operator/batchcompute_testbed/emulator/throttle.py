"""Per-subscription token buckets for reads, writes and deletes, as ARM meters them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from .config import BucketSpec, ThrottleConfig

KINDS = ("read", "write", "delete")


class TokenBucket:
    """Starts full; refills continuously at `refill` tokens per second up to `bucket`."""

    def __init__(self, spec: BucketSpec, clock: Callable[[], float]) -> None:
        self.spec = spec
        self._clock = clock
        self._tokens = spec.bucket
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._stamp)
        self._tokens = min(self.spec.bucket, self._tokens + elapsed * self.spec.refill)
        self._stamp = now

    @property
    def remaining(self) -> int:
        self._refill()
        return int(self._tokens)

    def take(self) -> bool:
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def seconds_until_token(self) -> int:
        """Whole seconds (at least 1) a client should wait before the next try."""
        self._refill()
        missing = 1.0 - self._tokens
        if self.spec.refill <= 0:
            return 3600
        return max(1, math.ceil(missing / self.spec.refill))


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    remaining: int | None  # None when throttling is off
    retry_after: int = 0


class Throttler:
    """Buckets keyed by (subscription, kind); recreated whenever the limits change."""

    def __init__(
        self, config: ThrottleConfig | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self.config = config

    def reconfigure(self, config: ThrottleConfig | None) -> None:
        self.config = config
        self._buckets.clear()

    def _bucket(self, subscription: str, kind: str) -> TokenBucket | None:
        if self.config is None:
            return None
        key = (subscription.lower(), kind)
        bucket = self._buckets.get(key)
        if bucket is None:
            spec = {"read": self.config.reads, "write": self.config.writes}.get(
                kind, self.config.deletes
            )
            bucket = self._buckets[key] = TokenBucket(spec, self._clock)
        return bucket

    def take(self, subscription: str, kind: str) -> Verdict:
        bucket = self._bucket(subscription, kind)
        if bucket is None:
            return Verdict(True, None)
        if bucket.take():
            return Verdict(True, bucket.remaining)
        return Verdict(False, 0, bucket.seconds_until_token())

    def peek(self, subscription: str, kind: str) -> int | None:
        bucket = self._bucket(subscription, kind)
        return None if bucket is None else bucket.remaining


def remaining_header(kind: str) -> str:
    return f"x-ms-ratelimit-remaining-subscription-{kind}s"
