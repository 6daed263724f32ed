"""How an agent takes its messages: what already arrived, together, and never a wait for company.

``ready_batches`` sits between Faust's stream and the edge: a busy agent finds the messages that arrived while
it waited for the broker and handles them as one batch (one durable wait, one send wait); an agent that keeps up
gets each message alone, at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from streams.app import ready_batches

pytestmark = pytest.mark.agents


async def _items(*items: int, then: BaseException | None = None) -> AsyncIterator[int]:
    for item in items:
        yield item
    if then is not None:
        raise then


async def test_what_already_arrived_is_taken_together_but_no_more_than_the_most() -> None:
    async with aclosing(ready_batches(_items(1, 2, 3, 4, 5), most=3)) as batches:
        assert [batch async for batch in batches] == [[1, 2, 3], [4, 5]]


async def test_a_lone_message_is_handed_over_at_once() -> None:
    never = asyncio.Event()

    async def one_then_quiet() -> AsyncIterator[int]:
        yield 1
        await never.wait()
        yield 2

    async with aclosing(ready_batches(one_then_quiet(), most=16)) as batches:
        assert await asyncio.wait_for(anext(batches), 1.0) == [1]


async def test_a_source_error_comes_after_the_items_read_before_it() -> None:
    got: list[list[int]] = []
    with pytest.raises(RuntimeError, match="stream broke"):
        async with aclosing(ready_batches(_items(1, 2, then=RuntimeError("stream broke")), most=8)) as batches:
            async for batch in batches:
                got.append(batch)  # noqa: PERF401 - kept one by one: the error ends the loop
    assert got == [[1, 2]]


async def test_reading_ahead_stops_when_the_consumer_stops() -> None:
    read: list[int] = []

    async def endless() -> AsyncIterator[int]:
        n = 0
        while True:
            n += 1
            read.append(n)
            yield n
            await asyncio.sleep(0)

    async with aclosing(ready_batches(endless(), most=2)) as batches:
        await anext(batches)
    count = len(read)
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(read) == count, "the reader task was cancelled with the batches"
    assert count <= 4, "it read at most a batch and a queue ahead"
