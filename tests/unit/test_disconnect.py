"""all_or_none: one failed part cancels the others (their queue slots are freed);
cancel_on_disconnect: a departed client cancels its work, in the caller's own task."""

from __future__ import annotations

import asyncio

import pytest

from contract.errors import ClientDisconnected, QueueFull
from server.flow.pipeline import all_or_none
from server.http.disconnect import cancel_on_disconnect

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


class _Client:
    """Stands in for a Starlette request after its body was read: ``receive`` blocks until
    ``leave()``, then says ``http.disconnect``."""

    def __init__(self) -> None:
        self._gone = asyncio.Event()

    def leave(self) -> None:
        self._gone.set()

    async def receive(self) -> dict[str, str]:
        await self._gone.wait()
        return {"type": "http.disconnect"}


async def test_the_work_runs_in_the_callers_task_and_its_result_is_returned() -> None:
    caller = asyncio.current_task()

    async def work() -> object:
        await asyncio.sleep(0)
        return asyncio.current_task()

    assert await cancel_on_disconnect(_Client(), work()) is caller  # type: ignore[arg-type]


async def test_a_departed_client_cancels_the_work_and_raises() -> None:
    client, cancelled = _Client(), asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    asyncio.get_running_loop().call_later(0.05, client.leave)
    with pytest.raises(ClientDisconnected):
        await cancel_on_disconnect(client, work())  # type: ignore[arg-type]
    assert cancelled.is_set()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # our cancel was taken back


async def test_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    async def request() -> None:
        await cancel_on_disconnect(_Client(), asyncio.sleep(30))  # type: ignore[arg-type]

    task = asyncio.ensure_future(request())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_departure_after_the_answer_changes_nothing() -> None:
    client = _Client()
    assert await cancel_on_disconnect(client, asyncio.sleep(0, "done")) == "done"  # type: ignore[arg-type]
    client.leave()
    await asyncio.sleep(0.01)  # the watcher is gone: no cancel reaches this task
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
