"""The ARM client's guarantees that matter most: where the token goes, and what is retried.

The transport is httpx's MockTransport, which records every request the client really sent;
the integration suite covers the same client against the emulator over TLS.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from azure.core.credentials import AccessToken

from batchcompute_operator.credentials import RenewableCredential, TokenCache, TokenRefused
from batchcompute_operator.spec import WorkspaceRef
from batchcompute_operator.workspace.api import WorkspaceApi
from batchcompute_operator.workspace.client import ArmClient, TokenGetter
from batchcompute_operator.workspace.errors import ArmError, UnsafeUrl
from batchcompute_operator.workspace.pacing import SubscriptionPacer

SUB = "00000000-0000-0000-0000-000000000001"
WS = WorkspaceRef(SUB, "ml-rg", "ml-ws")
SECRET = "token-that-must-stay-home"


class Tokens:
    key = "test-principal"

    def __init__(self) -> None:
        self.invalidated: list[str | None] = []

    async def __call__(self) -> str:
        return SECRET

    def invalidate(self, token: str | None = None) -> None:
        self.invalidated.append(token)


def make(handler: Any, pacer: SubscriptionPacer | None = None,
         tokens: TokenGetter | None = None) -> tuple[WorkspaceApi, list[httpx.Request], Tokens]:
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        response: httpx.Response = handler(request)
        return response

    fake = Tokens()
    http = httpx.AsyncClient(transport=httpx.MockTransport(record))
    client = ArmClient("https://arm.example", "2020-02-02", tokens or fake,
                       pacer or SubscriptionPacer(enabled=False), http=http)
    client.backoff = lambda attempt, retry_after: 0.0  # type: ignore[method-assign]
    return WorkspaceApi(client), sent, fake


async def test_foreign_operation_url_is_refused_and_gets_no_token() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "Succeeded"})

    api, sent, _ = make(handler)
    for url in ("https://evil.example/op", "http://arm.example/op", "https://arm.example:444/op"):
        with pytest.raises(UnsafeUrl):
            await api.operation(url, SUB)
    assert sent == []


async def test_foreign_next_link_is_not_followed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"value": [], "nextLink": "https://evil.example/page2"})

    api, sent, _ = make(handler)
    with pytest.raises(UnsafeUrl):
        await api.list_computes(WS)
    assert [r.url.host for r in sent] == ["arm.example"]
    assert sent[0].headers["Authorization"] == f"Bearer {SECRET}"


async def test_async_operation_header_on_another_host_is_refused_at_submit() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(202, headers={"Azure-AsyncOperation": "https://evil.example/op"})

    api, sent, _ = make(handler)
    with pytest.raises(UnsafeUrl):
        await api.delete_compute(WS, "mybatch")
    assert len(sent) == 1


async def test_reads_are_retried_on_503_but_writes_are_not() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": {"code": "ServiceUnavailable",
                                                    "message": "busy"}})

    api, sent, _ = make(handler)
    with pytest.raises(ArmError) as err:
        await api.get_compute(WS, "mybatch")
    assert err.value.retryable
    assert len(sent) == 4
    sent.clear()
    with pytest.raises(ArmError):
        await api.delete_compute(WS, "mybatch")
    assert len(sent) == 1  # a lost DELETE answer is re-observed, never blindly re-sent


async def test_429_blocks_the_subscription_bucket_for_retry_after() -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return httpx.Response(429, headers={"Retry-After": "7"}, json={
                "error": {"code": "SubscriptionRequestsThrottled", "message": "slow down"}})
        return httpx.Response(200, json={"value": []})

    pacer = SubscriptionPacer()
    api, sent, _ = make(handler, pacer)
    bucket = pacer.bucket(f"{SUB}|{Tokens.key}", "reads")  # ARM's unit: subscription+principal
    bucket.acquire = _instant(bucket)  # type: ignore[method-assign]
    assert await api.list_computes(WS) == {}
    assert len(sent) == 2
    assert bucket.blocked_until > 0
    assert api.client.stats.throttled == 1


def _instant(bucket: Any) -> Any:
    async def acquire() -> float:
        return 0.0
    return acquire


async def test_401_drops_the_refused_token_and_sends_the_call_once_more() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"code": "ExpiredAuthenticationToken",
                                                    "message": "expired"}})

    api, sent, tokens = make(handler)
    with pytest.raises(ArmError) as err:
        await api.get_compute(WS, "mybatch")
    assert err.value.code == "ExpiredAuthenticationToken"
    assert tokens.invalidated == [SECRET, SECRET]  # it names the token ARM refused
    assert len(sent) == 2  # once more after a 401, then no further
    assert SECRET not in str(err.value)


class Identity:
    """An azure-identity credential as far as caching goes; `minted` counts requests to the
    identity endpoint (one per fresh instance)."""

    minted = 0

    def __init__(self) -> None:
        self.token: str | None = None

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        if self.token is None:
            Identity.minted += 1
            self.token = f"{SECRET}-{Identity.minted}"
        return AccessToken(self.token, int(time.time()) + 3600)

    async def close(self) -> None:
        return None


def identity_tokens() -> TokenCache:
    Identity.minted = 0
    return TokenCache(RenewableCredential("ManagedIdentityCredential", Identity),
                      "https://arm.example", key="test-principal")


def bearer(request: httpx.Request) -> str:
    return request.headers["Authorization"].removeprefix("Bearer ")


async def test_a_revoked_token_is_replaced_within_the_same_call() -> None:
    """The issue's scenario: ARM stops accepting a token the credential still has cached."""
    revoked = {f"{SECRET}-1"}

    def handler(request: httpx.Request) -> httpx.Response:
        if bearer(request) in revoked:
            return httpx.Response(401, json={"error": {"code": "InvalidAuthenticationToken",
                                                        "message": "The access token is invalid."}})
        return httpx.Response(200, json={"value": []})

    tokens = identity_tokens()
    api, sent, _ = make(handler, tokens=tokens)
    assert await api.list_computes(WS) == {}
    assert [bearer(r) for r in sent] == [f"{SECRET}-1", f"{SECRET}-2"]
    assert Identity.minted == 2
    sent.clear()
    assert await api.list_computes(WS) == {}
    assert [bearer(r) for r in sent] == [f"{SECRET}-2"]  # the fresh token is kept


async def test_a_write_refused_with_401_is_sent_again_with_a_fresh_token() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if bearer(request) == f"{SECRET}-1":
            return httpx.Response(401, json={"error": {"code": "InvalidAuthenticationToken",
                                                        "message": "The access token is invalid."}})
        return httpx.Response(202, headers={"Location": "https://arm.example/op"})

    api, sent, _ = make(handler, tokens=identity_tokens())
    await api.delete_compute(WS, "mybatch")
    assert [(r.method, bearer(r)) for r in sent] == [("DELETE", f"{SECRET}-1"),
                                                     ("DELETE", f"{SECRET}-2")]


async def test_a_persistently_refused_identity_is_not_sent_again_until_renewal_is_allowed(
        ) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {
            "code": "InvalidAuthenticationTokenAudience",
            "message": "The access token has been obtained for wrong audience or resource."}})

    api, sent, _ = make(handler, tokens=identity_tokens())
    with pytest.raises(ArmError) as first:
        await api.list_computes(WS)
    assert first.value.code == "InvalidAuthenticationTokenAudience"
    assert len(sent) == 2 and Identity.minted == 2
    for _ in range(5):
        with pytest.raises(TokenRefused) as later:
            await api.list_computes(WS)
        assert later.value.retry_after is not None and later.value.retry_after > 0
    assert len(sent) == 2 and Identity.minted == 2  # neither ARM nor the endpoint asked again


@pytest.mark.parametrize("body", [b"<html>oops</html>", b"{}", b'{"value": "x"}', b"null"])
async def test_garbage_list_bodies_are_retryable_errors(body: bytes) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    api, _, _ = make(handler)
    with pytest.raises(ArmError) as err:
        await api.list_computes(WS)
    assert err.value.retryable


async def test_unknown_states_and_foreign_types_parse_without_raising() -> None:
    page = {"value": [
        {"name": "a", "properties": {"computeType": "AKS", "provisioningState": "Weird"}},
        {"name": "b", "properties": "not-a-dict", "tags": ["x"]},
        {"no-name": True}, 42,
    ]}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=json.dumps(page).encode())

    api, _, _ = make(handler)
    computes = await api.list_computes(WS)
    assert computes["a"].provisioning_state == "Unknown"
    assert computes["a"].compute_type == "AKS"
    assert computes["b"].compute_type == "Unknown"
    assert set(computes) == {"a", "b"}


def test_plain_http_endpoint_needs_the_development_flag() -> None:
    http = httpx.AsyncClient()
    with pytest.raises(ValueError, match="https"):
        ArmClient("http://127.0.0.1:8080", "2020-02-02", Tokens(), SubscriptionPacer(), http=http)
    ArmClient("http://127.0.0.1:8080", "2020-02-02", Tokens(), SubscriptionPacer(), http=http,
              allow_insecure_http=True)


async def test_reads_are_parsed_a_few_at_a_time_and_writes_do_not_wait_for_them() -> None:
    """A burst of LISTs holds at most `reads_at_once` answers at a time; a DELETE sent
    meanwhile goes straight through."""
    in_flight: list[str] = []
    most_gets = 0
    seen: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal most_gets
        in_flight.append(request.method)
        most_gets = max(most_gets, in_flight.count("GET"))
        seen.append(f"{request.method} gets-in-flight={in_flight.count('GET')}")
        try:
            if request.method == "GET":
                await asyncio.sleep(0.05)
                return httpx.Response(200, json={"value": []})
            return httpx.Response(200, json={})
        finally:
            in_flight.remove(request.method)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    client = ArmClient("https://arm.example", "2020-02-02", Tokens(),
                       SubscriptionPacer(enabled=False), http=http, reads_at_once=2)
    api = WorkspaceApi(client)
    lists = [asyncio.create_task(api.list_computes(WS)) for _ in range(6)]
    await asyncio.sleep(0.01)  # two GETs on the wire, four waiting
    await api.delete_compute(WS, "mybatch")
    await asyncio.gather(*lists)
    assert most_gets == 2
    assert [s for s in seen if s.startswith("DELETE")] == ["DELETE gets-in-flight=2"]
    assert len([s for s in seen if s.startswith("GET")]) == 6
