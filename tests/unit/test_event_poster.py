"""The event poster: retried while the API server cannot take an event, never duplicated."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from batchcompute_operator.kube import events as events_module
from batchcompute_operator.kube.client import KubeError
from batchcompute_operator.kube.events import EventPoster, InvolvedObject

OBJ = InvolvedObject("batchcompute.azureml.dev/v1alpha1", "BatchComputeAttachment", "team-a",
                     "mybatch", "uid-1")


class FakeClient:
    """Answers each POST with the next of `answers`: an exception to raise, or True/False
    (created / existed already); records every body it was sent."""

    def __init__(self, *answers: KubeError | bool) -> None:
        self.answers = list(answers)
        self.sent: list[dict[str, Any]] = []

    async def post_event(self, namespace: str, event: Mapping[str, Any]) -> bool:
        self.sent.append(dict(event))
        answer = self.answers.pop(0) if self.answers else True
        if isinstance(answer, KubeError):
            raise answer
        return answer


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    real_sleep = asyncio.sleep
    monkeypatch.setattr(events_module.asyncio, "sleep", lambda _: real_sleep(0))


async def post_one(client: FakeClient) -> EventPoster:
    poster = EventPoster(client, "replica-1", posters=1)  # type: ignore[arg-type]
    poster.start()
    poster.post(OBJ, "Normal", "Attached", "attached")
    await poster.stop(drain=5)
    return poster


async def test_an_event_the_api_server_cannot_take_yet_is_posted_once_it_can() -> None:
    client = FakeClient(KubeError(500, "could not be completed at this time"),
                        KubeError(429, "too many requests"), KubeError(0, "no answer"))
    poster = await post_one(client)
    assert (poster.posted, poster.dropped) == (1, 0)
    assert len(client.sent) == 4
    # every attempt is the same named object, so a stored one answers 409 when retried
    assert len({body["metadata"]["name"] for body in client.sent}) == 1
    assert client.sent[0]["metadata"]["name"].startswith("mybatch.")
    assert "generateName" not in client.sent[0]["metadata"]


async def test_an_event_stored_before_its_answer_was_lost_counts_as_posted() -> None:
    poster = await post_one(FakeClient(KubeError(0, "connection reset"), False))
    assert (poster.posted, poster.dropped) == (1, 0)


async def test_an_event_refused_for_good_is_dropped_without_retrying() -> None:
    client = FakeClient(KubeError(422, "invalid"))
    poster = await post_one(client)
    assert (poster.posted, poster.dropped) == (0, 1)
    assert len(client.sent) == 1


async def test_two_events_for_one_object_at_once_get_distinct_names() -> None:
    client = FakeClient()
    poster = EventPoster(client, "replica-1", posters=1)  # type: ignore[arg-type]
    poster.start()
    for _ in range(3):
        poster.post(OBJ, "Normal", "Detaching", "detaching")
    await poster.stop(drain=5)
    assert len({body["metadata"]["name"] for body in client.sent}) == 3
