"""Token sources per identity, resolved lazily and kept, so a Secret is not read per step.

The operator's own identity is fixed for the process. A namespace's identity comes from a
Secret the namespace grants the operator; it is re-read at most every `ttl` seconds, or at
once after ARM refused its token, so a rotated secret is picked up without a restart.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from batchcompute_operator.credentials import CredentialsUnavailable
from batchcompute_operator.workspace.client import TokenGetter

Resolve = Callable[[str, str], Awaitable[TokenGetter]]


class Identities:
    def __init__(self, resolve: Resolve | None, *, ttl: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._resolve = resolve
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, TokenGetter]] = {}

    async def get(self, identity: str) -> TokenGetter | None:
        """None: the operator's own identity; else the namespace's ("namespace/secret")."""
        if not identity:
            return None
        cached = self._cache.get(identity)
        if cached is not None and self._clock() - cached[0] < self._ttl:
            return cached[1]
        if self._resolve is None:
            raise CredentialsUnavailable("per-namespace credentials are not enabled",
                                         retryable=False)
        namespace, _, secret = identity.partition("/")
        tokens = await self._resolve(namespace, secret)
        self._cache[identity] = (self._clock(), tokens)
        return tokens

    def refresh(self, identity: str) -> None:
        """ARM refused this identity's token: read its Secret again next time."""
        self._cache.pop(identity, None)
