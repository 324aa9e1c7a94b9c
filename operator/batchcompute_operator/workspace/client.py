"""The ARM client: one httpx.AsyncClient per process, paced, retrying, token-guarding.

Every call names its subscription and kind so the pacer can hold it back before ARM has
to. Reads are retried here on transient failures; writes are not, because a PUT or DELETE
whose answer was lost may still have happened: the caller re-observes and decides again.
A 401 is different: ARM did nothing, so any call is sent once more, with a fresh token (the
token source never hands out a token ARM refused; when it has no other, it fails at once).
The bearer token is attached only to URLs on the configured ARM host and scheme.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx

from batchcompute_operator import metrics
from batchcompute_operator.workspace.errors import (
    ArmError,
    AuthenticationFailed,
    UnsafeUrl,
    error_from_body,
)
from batchcompute_operator.workspace.pacing import Kind, SubscriptionPacer

log = logging.getLogger(__name__)



class TokenGetter(Protocol):
    """A bearer-token source; `key` names the principal, since ARM throttles per principal.

    `invalidate(token)` says ARM refused `token` (401): it must not be handed out again.
    """

    key: str

    async def __call__(self) -> str: ...
    def invalidate(self, token: str | None = None) -> None: ...

Method = Literal["GET", "PUT", "DELETE"]

KIND_BY_METHOD: dict[str, Kind] = {"GET": "reads", "PUT": "writes", "DELETE": "deletes"}


@dataclass(frozen=True)
class ArmResponse:
    status: int
    body: Any
    headers: httpx.Headers

    def header_seconds(self, name: str) -> float | None:
        return parse_seconds(self.headers.get(name))


def parse_seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # HTTP-date form; ARM sends seconds, so treat anything else as absent
    return max(0.0, min(seconds, 3600.0))


@dataclass
class CallStats:
    """Counters for metrics and the benchmark: what this process asked of ARM."""

    calls: int = 0
    throttled: int = 0
    retries: int = 0
    paced_seconds: float = 0.0


class ArmClient:
    """Talks to one ARM endpoint on behalf of the whole operator process."""

    def __init__(
        self,
        endpoint: str,
        api_version: str,
        token: TokenGetter,
        pacer: SubscriptionPacer,
        *,
        http: httpx.AsyncClient,
        allow_insecure_http: bool = False,
        read_attempts: int = 4,
        max_backoff: float = 30.0,
        reads_at_once: int = 4,
    ) -> None:
        base = httpx.URL(endpoint)
        if base.scheme != "https" and not (allow_insecure_http and base.scheme == "http"):
            raise ValueError(f"ARM endpoint {endpoint!r} must use https")
        self.base = base
        self.api_version = api_version
        self._token = token
        self._pacer = pacer
        self._http = http
        self._allow_http = allow_insecure_http
        self._read_attempts = read_attempts
        self._max_backoff = max_backoff
        # GETs (LIST pages above all) are sent, read and parsed a few at a time, so the
        # answers held at once are bounded by this, not by the pool. Pacing waits and
        # backoff happen outside it.
        self._reads = asyncio.Semaphore(reads_at_once)
        self.stats = CallStats()
        self.last_answer = 0.0  # monotonic time ARM last answered anything
        self.reachable = False  # the last request got an HTTP answer (readiness)

    async def probe(self) -> bool:
        """Is ARM reachable? A request with no token: any HTTP answer (401 included) says yes."""
        url = self.base.copy_with(path="/subscriptions", params={"api-version": "2022-12-01"})
        try:
            await self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError:
            self.reachable = False
            return False
        self.last_answer = time.monotonic()
        self.reachable = True
        return True

    def spare(self, subscription: str, token: TokenGetter | None, kind: Kind,
              fraction: float) -> bool:
        """Whether this budget has more than `fraction` of its tokens left right now."""
        tokens = token or self._token
        return self._pacer.level(f"{subscription}|{tokens.key}", kind) > fraction

    def url_for(self, path: str) -> httpx.URL:
        """An ARM path (already validated segments) on our host, with our api-version."""
        return self.base.copy_with(path=path, params={"api-version": self.api_version})

    def checked(self, url: str) -> httpx.URL:
        """Accept a URL ARM handed back (operation, nextLink) only if it is on our host."""
        parsed = httpx.URL(url)
        if (parsed.scheme, parsed.host, parsed.port) != (self.base.scheme, self.base.host,
                                                          self.base.port):
            raise UnsafeUrl(
                f"ARM returned a URL outside {_origin(self.base)} ({_origin(parsed)}); it was "
                "not followed and no token was sent"
            )
        if parsed.scheme != "https" and not self._allow_http:
            raise UnsafeUrl("ARM returned a plain-http URL; it was not followed")
        if "api-version" not in parsed.params:
            parsed = parsed.copy_merge_params({"api-version": self.api_version})
        return parsed

    async def reserve(self, subscription: str, token: TokenGetter | None, kind: Kind) -> None:
        """Wait for this budget's next token now, for a call sent later with `prepaid`.

        A PUT that creates waits for its turn first and re-reads the workspace after, so the
        read it decides from is seconds old at most, not as old as the wait.
        """
        tokens = token or self._token
        waited = await self._pacer.acquire(f"{subscription}|{tokens.key}", kind)
        self.stats.paced_seconds += waited
        if waited:
            metrics.pacing_wait.labels(kind).inc(waited)

    async def call(self, method: Method, url: httpx.URL, subscription: str,
                   *, body: Any = None, kind: Kind | None = None,
                   token: TokenGetter | None = None, prepaid: bool = False) -> ArmResponse:
        """One logical ARM call: paced, and for reads retried on transient failures.

        `prepaid`: the caller already took this call's first pacing token (`reserve`).
        """
        kind = kind or KIND_BY_METHOD[method]
        token = token or self._token
        attempts = self._read_attempts if method == "GET" else 1
        attempt = 0
        refused = False
        while True:
            attempt += 1
            try:
                return await self._once(method, url, subscription, kind, body, token,
                                        paced=not (prepaid and attempt == 1 and not refused))
            except ArmError as err:
                if isinstance(err, AuthenticationFailed):
                    if err.status == 401 and not refused:
                        # ARM refused the token and did nothing: once more, with a fresh one.
                        refused = True
                        self.stats.retries += 1
                        log.info("ARM %s %s: %s; sending it again with a new token",
                                 method, url.path, err.code)
                        continue
                    raise
                # A 429 means ARM did nothing, so even a write may be sent again.
                again = err.retryable and (attempt < attempts or (err.throttled and attempt < 6))
                if not again:
                    raise
                delay = self.backoff(attempt, err.retry_after)
                self.stats.retries += 1
                log.info("ARM %s %s: %s; retrying in %.1fs", method, url.path, err, delay)
                await asyncio.sleep(delay)

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential with jitter, never shorter than what ARM asked for."""
        base = min(self._max_backoff, 0.5 * 2 ** (attempt - 1))
        jittered: float = base * random.uniform(0.5, 1.5)
        return max(jittered, retry_after or 0.0)

    async def _once(self, method: Method, url: httpx.URL, subscription: str, kind: Kind,
                    body: Any, tokens: TokenGetter, *, paced: bool = True) -> ArmResponse:
        budget = f"{subscription}|{tokens.key}"
        if paced:
            waited = await self._pacer.acquire(budget, kind)
            self.stats.paced_seconds += waited
            if waited:
                metrics.pacing_wait.labels(kind).inc(waited)
        token = await tokens()
        if method == "GET":
            async with self._reads:
                return await self._exchange(method, url, budget, kind, body, tokens, token)
        return await self._exchange(method, url, budget, kind, body, tokens, token)

    async def _exchange(self, method: Method, url: httpx.URL, budget: str, kind: Kind,
                        body: Any, tokens: TokenGetter, token: str) -> ArmResponse:
        self.stats.calls += 1
        resource = _resource(url)
        began = time.monotonic()
        try:
            resp = await self._http.request(
                method, url, json=body,
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            )
        except httpx.TimeoutException as exc:
            metrics.arm_failures.labels(resource, method).inc()
            self.reachable = False
            raise ArmError(0, "Timeout", f"ARM did not answer in time ({type(exc).__name__})",
                           retryable=True) from None
        except httpx.TransportError as exc:
            metrics.arm_failures.labels(resource, method).inc()
            self.reachable = False
            raise ArmError(0, "ConnectionError", f"connection to ARM failed ({type(exc).__name__})",
                           retryable=True) from None
        finally:
            metrics.arm_time.labels(resource, method).observe(time.monotonic() - began)
        metrics.arm_responses.labels(resource, method, str(resp.status_code)).inc()
        self.last_answer = time.monotonic()
        self.reachable = True
        retry_after = parse_seconds(resp.headers.get("Retry-After"))
        remaining = resp.headers.get(f"x-ms-ratelimit-remaining-subscription-{kind}")
        # ARM asked us to wait (throttled, or busy): nothing goes to this subscription for
        # that long, whatever its kind, so a LIST never rushes in after a throttled PUT.
        self._pacer.observe(
            budget, kind,
            int(remaining) if remaining and remaining.isdigit() else None,
            retry_after if resp.status_code == 429 or resp.status_code >= 500 else None,
        )
        parsed = _json_or_text(resp)
        if resp.status_code == 429:
            self.stats.throttled += 1
        if resp.status_code == 401:
            tokens.invalidate(token)  # expired or revoked: never sent again
        if resp.status_code >= 400:
            raise error_from_body(resp.status_code, parsed, retry_after)
        return ArmResponse(resp.status_code, parsed, resp.headers)


def _origin(url: httpx.URL) -> str:
    """scheme://host[:port], the port shown whenever the URL names one."""
    return f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port is not None else "")


def _resource(url: httpx.URL) -> str:
    """What kind of ARM resource a URL names, for metric labels (never its name or id)."""
    parts = [p.lower() for p in url.path.split("/") if p]
    for kind in ("operationresults", "operationsstatus", "computeoperationsstatus",
                 "computeoperationsresults"):
        if any(kind in p for p in parts):
            return "operations"
    if "computes" in parts:
        return "computes"
    if "workspaces" in parts:
        return "workspaces"
    return "subscriptions" if parts == ["subscriptions"] else "other"


def _json_or_text(resp: httpx.Response) -> Any:
    if not resp.content:
        return None
    try:
        return resp.json()
    except ValueError:
        return resp.text

