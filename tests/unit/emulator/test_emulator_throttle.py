"""Per-subscription token buckets: 429 with Retry-After, remaining budgets on every answer."""

from __future__ import annotations

import httpx
import pytest

from batchcompute_testbed.emulator.config import BucketSpec, ThrottleConfig
from batchcompute_testbed.emulator.throttle import Throttler, TokenBucket

from .helpers import OTHER_SUB, PARAMS, attach_body, compute_path, ws_path

READS = "x-ms-ratelimit-remaining-subscription-reads"
WRITES = "x-ms-ratelimit-remaining-subscription-writes"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_refills_continuously_up_to_its_size() -> None:
    clock = FakeClock()
    bucket = TokenBucket(BucketSpec(bucket=3, refill=2), clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.seconds_until_token() == 1
    clock.now += 0.5  # one token back
    assert bucket.take()
    assert not bucket.take()
    clock.now += 100
    assert bucket.remaining == 3


def test_retry_after_is_a_whole_number_of_seconds_at_least_one() -> None:
    clock = FakeClock()
    slow = TokenBucket(BucketSpec(bucket=1, refill=0.25), clock)
    assert slow.take()
    assert slow.seconds_until_token() == 4
    clock.now += 3.5
    assert slow.seconds_until_token() == 1


def test_throttler_keeps_subscriptions_and_kinds_apart() -> None:
    clock = FakeClock()
    limits = ThrottleConfig(
        reads=BucketSpec(1, 0), writes=BucketSpec(1, 0), deletes=BucketSpec(1, 0)
    )
    throttler = Throttler(limits, clock)
    assert throttler.take("SUB-A", "read").allowed
    assert not throttler.take("sub-a", "read").allowed  # subscription ids ignore case
    assert throttler.take("sub-a", "write").allowed
    assert throttler.take("sub-b", "read").allowed
    throttler.reconfigure(None)
    assert throttler.take("sub-a", "read").remaining is None


async def test_reads_are_throttled_with_retry_after(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await admin.post("/config", json={"throttle": {"reads": {"bucket": 3, "refill": 0.5}}})
    remaining = []
    for _ in range(3):
        response = await client.get(ws_path(), params=PARAMS)
        assert response.status_code == 200
        remaining.append(int(response.headers[READS]))
    assert remaining == [2, 1, 0]

    throttled = await client.get(ws_path(), params=PARAMS)
    assert throttled.status_code == 429
    assert throttled.json()["error"]["code"] == "SubscriptionRequestsThrottled"
    assert throttled.headers["Retry-After"] == "2"
    assert throttled.headers[READS] == "0"

    # Another subscription has its own budget.
    other = await client.get(ws_path(sub=OTHER_SUB, rg="rg-other", ws="ws-other"), params=PARAMS)
    assert other.status_code == 200
    log = (await admin.get("/requests")).json()
    assert [e["throttled"] for e in log] == [False, False, False, True, False]


async def test_throttled_writes_change_nothing(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await admin.post("/config", json={"throttle": {"writes": {"bucket": 1, "refill": 0.01}}})
    first = await client.put(compute_path("batch-first"), params=PARAMS, json=attach_body())
    assert first.status_code == 201
    assert first.headers[WRITES] == "0"
    second = await client.put(compute_path("batch-second"), params=PARAMS, json=attach_body())
    assert second.status_code == 429
    assert int(second.headers["Retry-After"]) == 100
    assert (await client.get(compute_path("batch-second"), params=PARAMS)).status_code == 404
    assert (await admin.get("/stats")).json()["throttled"] == 1


@pytest.mark.parametrize("setting", [None, {"reads": {"bucket": 1, "refill": 0}}])
async def test_switching_throttling_off_still_reports_budgets(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, setting: object
) -> None:
    await admin.post("/config", json={"throttle": setting})
    await admin.post("/config", json={"throttle": None})
    for _ in range(5):
        response = await client.get(ws_path(), params=PARAMS)
        assert response.status_code == 200
        assert int(response.headers[READS]) > 0


async def test_auth_failures_are_not_charged(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await admin.post("/config", json={"throttle": {"reads": {"bucket": 2, "refill": 0}}})
    async with httpx.AsyncClient(base_url=str(client.base_url)) as anonymous:
        for _ in range(3):
            denied = await anonymous.get(ws_path(), params=PARAMS)
            assert denied.status_code == 401
            assert denied.headers[READS] == "2"
    assert (await client.get(ws_path(), params=PARAMS)).status_code == 200
