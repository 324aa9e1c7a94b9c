"""Polling helpers for integration tests: wait until something the cluster does has happened."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def _timeout_message(
    message: str, timeout: float, last: object, error: BaseException | None
) -> str:
    text = f"timed out after {timeout:.1f}s waiting for {message or 'condition'}"
    if error is not None:
        return f"{text}; last error: {error!r}"
    return f"{text}; last value: {last!r}"


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.2,
    message: str = "",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `predicate` until it returns something truthy, and return that.

    Exceptions of the types in `ignore` count as "not yet"; anything else propagates. On
    timeout an AssertionError names `message` and the last value or error seen.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except ignore as exc:
            error = exc
        else:
            error = None
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(_timeout_message(message, timeout, last, error))
        time.sleep(interval)


async def wait_for_async(
    predicate: Callable[[], Awaitable[T] | T],
    timeout: float = 30.0,  # noqa: ASYNC109 - a polling deadline, not an I/O timeout
    interval: float = 0.2,
    message: str = "",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """`wait_for` for asyncio tests; `predicate` may be a plain or a coroutine function."""
    deadline = time.monotonic() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            result = predicate()
            value = await result if inspect.isawaitable(result) else result
        except ignore as exc:
            error = exc
        else:
            error = None
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(_timeout_message(message, timeout, last, error))
        await asyncio.sleep(interval)


def eventually(
    check: Callable[[], object],
    timeout: float = 30.0,
    interval: float = 0.2,
) -> None:
    """Retry an assertion-raising `check` until it passes; re-raise its last failure."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(interval)
