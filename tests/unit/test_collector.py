"""Cyclic garbage that reached the oldest generation is freed on the collector's timer."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from batchcompute_operator.collector import Collector


class Node:
    """Stands in for kopf's views of an event body, which refer to one another."""

    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def automatic_gc_off() -> Iterator[None]:
    """Only explicit collections run, so what frees the garbage is known."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def old_cycle() -> weakref.ref[Node]:
    """A cycle that was alive through a collection (so is in the oldest generation), then
    dropped, the way a body handled across a collection is."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    gc.collect()  # promotes both to the oldest generation
    gc.collect(1)  # a younger collection since the last full one, as under any load
    return weakref.ref(a)


async def wait_until_freed(ref: weakref.ref[Node], deadline: float) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while loop.time() < end:
        if ref() is None:
            return True
        await asyncio.sleep(0.01)
    return False


@pytest.mark.usefixtures("automatic_gc_off")
async def test_an_old_cycle_is_freed_within_the_interval() -> None:
    ref = old_cycle()
    collector = Collector(every=0.05)
    collector.start()
    try:
        assert await wait_until_freed(ref, deadline=2.0)
        assert collector.runs >= 1
    finally:
        await collector.stop()


@pytest.mark.usefixtures("automatic_gc_off")
async def test_without_the_collector_the_cycle_stays() -> None:
    ref = old_cycle()
    assert not await wait_until_freed(ref, deadline=0.3)
    gc.collect()
    assert ref() is None


@pytest.mark.usefixtures("automatic_gc_off")
async def test_nothing_promoted_since_the_last_full_collection_means_no_collection() -> None:
    gc.collect()
    collector = Collector(every=0.02)
    collector.start()
    try:
        await asyncio.sleep(0.2)
        assert collector.runs == 0
    finally:
        await collector.stop()


def test_collections_take_at_most_their_share_of_the_time() -> None:
    collector = Collector(every=10.0, share=0.05)
    assert collector.delay(0.1) == 10.0  # cheap: the interval
    assert collector.delay(1.0) == pytest.approx(20.0)  # 1 s of CPU is 5% of 20 s
