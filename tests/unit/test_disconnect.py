"""all_or_none: one failed part cancels the others (their queue slots are freed)."""

from __future__ import annotations

import asyncio

import pytest

from contract.errors import QueueFull
from server.flow.pipeline import all_or_none

pytestmark = pytest.mark.asyncio


async def test_results_in_order_when_all_succeed() -> None:
    async def part(i: int) -> int:
        await asyncio.sleep(0.01 * (3 - i))
        return i

    assert await all_or_none(part(i) for i in range(3)) == [0, 1, 2]


async def test_a_failure_cancels_the_other_parts_and_is_raised() -> None:
    cancelled: list[int] = []

    async def waits(i: int) -> int:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        return i

    async def fails() -> int:
        await asyncio.sleep(0.01)
        raise QueueFull("queue full")

    async with asyncio.timeout(5):
        with pytest.raises(QueueFull, match="queue full"):
            await all_or_none([waits(0), fails(), waits(2)])
    assert sorted(cancelled) == [0, 2]
