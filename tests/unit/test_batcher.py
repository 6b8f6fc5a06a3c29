"""Unit tests for server.flow.batcher with fake async run functions (no model).

Timing-sensitive assertions use generous margins; every test is bounded by ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from contract.errors import InferenceFailed, QueueFull, QueueTimeout, ShuttingDown
from server.flow.batcher import BatchConfig, Batcher, Completed

HUGE = 1000.0


class Recorder:
    """Fake run function: records each batch, waits on ``gate``, returns ``payload * 2``."""

    def __init__(self, *, held: bool = False, on_run: Callable[[], None] | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        if not held:
            self.gate.set()
        self.on_run = on_run

    async def __call__(self, payloads: Sequence[int]) -> Sequence[int]:
        self.batches.append(list(payloads))
        await self.gate.wait()
        if self.on_run is not None:
            self.on_run()
        return self.compute(payloads)

    def compute(self, payloads: Sequence[int]) -> Sequence[int]:
        return [p * 2 for p in payloads]


async def until(predicate: Callable[[], bool]) -> None:
    """Yield to the loop until ``predicate()`` holds; TimeoutError after 1 s."""
    async with asyncio.timeout(1):
        # Polling is the point: we watch the batcher's state, which offers no event to await.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def started(
    runners: Sequence[Recorder], clock: Callable[[], float] | None = None, **config: Any
) -> AsyncIterator[Batcher[int, int]]:
    extra = {} if clock is None else {"clock": clock}
    batcher: Batcher[int, int] = Batcher(runners, BatchConfig(**config), name="t", **extra)
    await batcher.start()
    try:
        async with asyncio.timeout(5):
            yield batcher
    finally:
        for runner in runners:
            runner.gate.set()
        await batcher.stop(1.0)


def submit(batcher: Batcher[int, int], payload: int, rows: int = 1) -> asyncio.Task[Completed[int]]:
    return asyncio.create_task(batcher.submit(payload, rows))


@pytest.mark.asyncio
async def test_size_trigger_dispatches_exactly_at_max_batch_size() -> None:
    rec = Recorder()
    async with started(
        [rec], eager=False, max_batch_size=3, max_queue_delay=HUGE, queue_timeout=2 * HUGE
    ) as b:
        first = [submit(b, 0), submit(b, 1)]
        done, _ = await asyncio.wait(first, timeout=0.05)
        assert not done
        assert rec.batches == []
        assert b.queue_depth == 2
        results = await asyncio.gather(*first, submit(b, 2))
        assert rec.batches == [[0, 1, 2]]
        assert [r.value for r in results] == [0, 2, 4]
        assert {r.batch_rows for r in results} == {3}


@pytest.mark.asyncio
async def test_delay_trigger_counts_from_oldest_item() -> None:
    rec = Recorder()
    async with started(
        [rec], eager=False, max_batch_size=100, max_queue_size=100, max_queue_delay=0.3
    ) as b:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        first = submit(b, 0)
        done, _ = await asyncio.wait([first], timeout=0.05)
        assert not done
        assert rec.batches == []
        await asyncio.sleep(0.15)
        second = submit(b, 1)
        a, c = await asyncio.gather(first, second)
        assert loop.time() - t0 >= 0.3
        assert rec.batches == [[0, 1]]
        # Deadline from the oldest item: the later one waited about 0.3 - 0.2 s, not a full delay.
        assert c.queue_seconds < 0.25 <= a.queue_seconds


@pytest.mark.asyncio
async def test_eager_idle_worker_runs_single_request_at_once() -> None:
    rec = Recorder()
    async with started([rec], eager=True, max_queue_delay=HUGE, queue_timeout=2 * HUGE) as b:
        async with asyncio.timeout(1):
            result = await b.submit(21)
        assert result.value == 42
        assert result.batch_rows == 1
        assert rec.batches == [[21]]


@pytest.mark.asyncio
async def test_eager_batches_requests_that_pile_up_while_busy() -> None:
    rec = Recorder(held=True)
    async with started([rec], eager=True, max_batch_size=8) as b:
        blocker = submit(b, 0)
        await until(lambda: b.in_flight == 1)
        rest = [submit(b, i) for i in (1, 2, 3)]
        await until(lambda: b.queue_depth == 3)
        rec.gate.set()
        results = await asyncio.gather(blocker, *rest)
        assert rec.batches == [[0], [1, 2, 3]]
        assert [r.batch_rows for r in results] == [1, 3, 3, 3]


@pytest.mark.asyncio
async def test_multi_row_items_never_split_and_pack_fifo() -> None:
    rec = Recorder()
    async with started([rec], eager=False, max_batch_size=8, max_queue_delay=0.2) as b:
        tasks = [submit(b, i, rows=3) for i in range(3)]
        a, c = await asyncio.wait_for(asyncio.gather(tasks[0], tasks[1]), timeout=0.15)
        assert rec.batches == [[0, 1]]  # the third item would overflow: batch was full at 6 rows
        assert (a.batch_rows, c.batch_rows) == (6, 6)
        assert not tasks[2].done()
        last = await tasks[2]
        assert rec.batches == [[0, 1], [2]]
        assert last.batch_rows == 3


@pytest.mark.asyncio
async def test_queue_full_raises_at_once_and_leaves_depth_unchanged() -> None:
    rec = Recorder(held=True)
    async with started([rec], max_batch_size=2, max_queue_size=4) as b:
        tasks = [submit(b, 0)]
        await until(lambda: b.in_flight == 1)
        tasks += [submit(b, 1, rows=2), submit(b, 2, rows=2)]
        await until(lambda: b.queue_depth == 4)
        with pytest.raises(QueueFull):
            await b.submit(3)
        assert b.queue_depth == 4
        rec.gate.set()
        await asyncio.gather(*tasks)
        assert rec.batches == [[0], [1], [2]]


@pytest.mark.asyncio
@pytest.mark.parametrize("rows", [0, -1, 3])
async def test_rows_out_of_range_is_value_error(rows: int) -> None:
    async with started([Recorder()], max_batch_size=2) as b:
        with pytest.raises(ValueError, match="rows"):
            await b.submit(1, rows=rows)
        assert b.queue_depth == 0


@pytest.mark.asyncio
async def test_queue_timeout_drops_item_and_never_runs_it() -> None:
    rec = Recorder(held=True)
    async with started([rec], max_queue_delay=0.0, queue_timeout=0.1) as b:
        blocker = submit(b, 0)
        await until(lambda: b.in_flight == 1)
        with pytest.raises(QueueTimeout):
            await b.submit(1)
        assert b.queue_depth == 0
        rec.gate.set()
        assert (await blocker).value == 0
        await asyncio.sleep(0.05)
        assert rec.batches == [[0]]


@pytest.mark.asyncio
async def test_failing_batch_fails_its_callers_only(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder(held=True)

    def boom_on_13(payloads: Sequence[int]) -> Sequence[int]:
        if 13 in payloads:
            raise RuntimeError("boom")
        return [p * 2 for p in payloads]

    rec.compute = boom_on_13  # type: ignore[method-assign]
    async with started([rec]) as b:
        blocker = submit(b, 0)
        await until(lambda: b.in_flight == 1)
        doomed = [submit(b, 13), submit(b, 1)]
        await until(lambda: b.queue_depth == 2)
        with caplog.at_level(logging.ERROR, logger="server.flow.batcher"):
            rec.gate.set()
            outcomes = await asyncio.gather(*doomed, return_exceptions=True)
        assert (await blocker).value == 0
        for outcome in outcomes:
            assert isinstance(outcome, InferenceFailed)
            assert outcome.message == "inference failed: RuntimeError"
        failures = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(failures) == 1
        assert failures[0].exc_info is not None
        assert (await b.submit(5)).value == 10
        assert rec.batches == [[0], [13, 1], [5]]


@pytest.mark.asyncio
async def test_wrong_result_count_is_inference_failed() -> None:
    rec = Recorder(held=True)
    rec.compute = lambda payloads: [p * 2 for p in payloads][:-1]  # type: ignore[method-assign]
    async with started([rec]) as b:
        blocker = submit(b, 0)
        await until(lambda: b.in_flight == 1)
        tasks = [submit(b, 1), submit(b, 2)]
        await until(lambda: b.queue_depth == 2)
        rec.gate.set()
        for outcome in await asyncio.gather(blocker, *tasks, return_exceptions=True):
            assert isinstance(outcome, InferenceFailed)
            assert outcome.message == "inference failed: ValueError"


@pytest.mark.asyncio
async def test_run_function_cancelling_itself_does_not_kill_worker() -> None:
    rec = Recorder()

    def cancel(payloads: Sequence[int]) -> Sequence[int]:
        if 13 in payloads:
            raise asyncio.CancelledError
        return [p * 2 for p in payloads]

    rec.compute = cancel  # type: ignore[method-assign]
    async with started([rec]) as b:
        with pytest.raises(InferenceFailed):
            await b.submit(13)
        assert (await b.submit(4)).value == 8


@pytest.mark.asyncio
async def test_cancel_while_queued_frees_slot_and_never_runs() -> None:
    rec = Recorder(held=True)
    async with started([rec], max_batch_size=1, max_queue_size=1) as b:
        blocker = submit(b, 0)
        await until(lambda: b.in_flight == 1)
        queued = submit(b, 1)
        await until(lambda: b.queue_depth == 1)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert b.queue_depth == 0
        replacement = submit(b, 2)  # would be QueueFull if the slot were still taken
        await until(lambda: b.queue_depth == 1)
        rec.gate.set()
        assert [r.value for r in await asyncio.gather(blocker, replacement)] == [0, 4]
        assert rec.batches == [[0], [2]]


@pytest.mark.asyncio
async def test_cancel_while_running_leaves_other_callers_served() -> None:
    rec = Recorder(held=True)
    async with started(
        [rec], eager=False, max_batch_size=3, max_queue_delay=HUGE, queue_timeout=2 * HUGE
    ) as b:
        a, c, d = submit(b, 1), submit(b, 2), submit(b, 3)
        await until(lambda: b.in_flight == 3)
        c.cancel()
        rec.gate.set()
        assert (await a).value == 2
        assert (await d).value == 6
        with pytest.raises(asyncio.CancelledError):
            await c
        await until(lambda: b.in_flight == 0)
        later = await asyncio.gather(submit(b, 4), submit(b, 5), submit(b, 6))
        assert [r.value for r in later] == [8, 10, 12]  # the worker is still serving


@pytest.mark.asyncio
async def test_each_caller_gets_its_own_result() -> None:
    rec = Recorder(held=True)
    async with started([rec], max_batch_size=4) as b:
        tasks = [submit(b, p) for p in (5, 3, 9, 1, 7, 2, 8, 6, 4)]
        await until(lambda: b.in_flight + b.queue_depth == 9)
        rec.gate.set()
        results = await asyncio.gather(*tasks)
        assert [r.value for r in results] == [10, 6, 18, 2, 14, 4, 16, 12, 8]
        assert all(len(batch) <= 4 for batch in rec.batches)
        assert [p for batch in rec.batches for p in batch] == [5, 3, 9, 1, 7, 2, 8, 6, 4]


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.asyncio
async def test_completed_fields_from_injected_clock() -> None:
    clock = FakeClock(10.0)
    rec = Recorder(held=True)
    async with started([rec], clock=clock, max_batch_size=4) as b:
        first = submit(b, 1, rows=2)
        await until(lambda: b.in_flight == 2)
        second = submit(b, 2, rows=3)
        await until(lambda: b.queue_depth == 3)
        clock.now = 11.5  # the first batch finishes and the second is dispatched at 11.5
        rec.gate.set()
        a, c = await asyncio.gather(first, second)
        assert a == Completed(value=2, queue_seconds=0.0, run_seconds=1.5, batch_rows=2)
        assert c == Completed(value=4, queue_seconds=1.5, run_seconds=0.0, batch_rows=3)


@pytest.mark.asyncio
async def test_two_runners_run_two_batches_concurrently() -> None:
    runners = [Recorder(held=True), Recorder(held=True)]
    async with started(runners) as b:
        first = submit(b, 1)
        await until(lambda: b.in_flight == 1)
        second = submit(b, 2)
        await until(lambda: b.in_flight == 2)
        assert b.queue_depth == 0
        assert sorted(runners[0].batches + runners[1].batches) == [[1], [2]]
        for runner in runners:
            runner.gate.set()
        assert [r.value for r in await asyncio.gather(first, second)] == [2, 4]


@pytest.mark.asyncio
async def test_stop_drains_queued_work_and_refuses_new() -> None:
    rec = Recorder(held=True)
    async with started([rec]) as b:
        tasks = [submit(b, 0)]
        await until(lambda: b.in_flight == 1)
        tasks += [submit(b, 1), submit(b, 2)]
        await until(lambda: b.queue_depth == 2)
        stopping = asyncio.create_task(b.stop(5.0))
        await until(lambda: not b.running)
        with pytest.raises(ShuttingDown):
            await b.submit(3)
        assert not stopping.done()
        rec.gate.set()
        await stopping
        assert [r.value for r in await asyncio.gather(*tasks)] == [0, 2, 4]
        assert rec.batches == [[0], [1, 2]]
        await b.stop(5.0)  # idempotent
        with pytest.raises(ShuttingDown):
            await b.submit(4)


@pytest.mark.asyncio
async def test_stop_flushes_delay_policy_without_waiting() -> None:
    rec = Recorder()
    async with started([rec], eager=False, max_queue_delay=HUGE, queue_timeout=2 * HUGE) as b:
        task = submit(b, 1)
        await until(lambda: b.queue_depth == 1)
        async with asyncio.timeout(1):
            await b.stop(HUGE)
        assert (await task).value == 2


@pytest.mark.asyncio
async def test_stuck_batch_past_drain_timeout_gets_shutting_down() -> None:
    rec = Recorder(held=True)  # never released before stop returns
    async with started([rec], max_batch_size=1) as b:
        running = submit(b, 0)
        await until(lambda: b.in_flight == 1)
        queued = submit(b, 1)
        await until(lambda: b.queue_depth == 1)
        async with asyncio.timeout(1):
            await b.stop(0.05)
        for task in (running, queued):
            with pytest.raises(ShuttingDown):
                await task
        assert (b.queue_depth, b.in_flight, b.running) == (0, 0, False)
        assert rec.batches == [[0]]


@pytest.mark.asyncio
async def test_submit_before_start_is_shutting_down() -> None:
    b: Batcher[int, int] = Batcher([Recorder()], BatchConfig())
    with pytest.raises(ShuttingDown):
        await b.submit(1)
    await b.stop(0.1)  # stopping a never-started batcher is fine


@pytest.mark.parametrize(
    "config",
    [
        {"max_batch_size": 0},
        {"max_queue_delay": -0.001},
        {"max_queue_delay": float("nan")},
        {"max_batch_size": 8, "max_queue_size": 4},
        {"queue_timeout": 0.0},
        {"max_queue_delay": 1.0, "queue_timeout": 0.5},
    ],
)
def test_config_rejects_bad_values(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        BatchConfig(**config)


def test_batcher_needs_a_runner() -> None:
    with pytest.raises(ValueError, match="runner"):
        Batcher([], BatchConfig())


class PerItemFailures(Recorder):
    """A runner whose result for a negative payload is an exception (its own failure)."""

    def compute(self, payloads: Sequence[int]) -> Sequence[Any]:
        return [ValueError(f"bad {p}") if p < 0 else p * 2 for p in payloads]


@pytest.mark.asyncio
async def test_an_exception_result_fails_only_its_own_item() -> None:
    rec = PerItemFailures(held=True)
    async with started([rec], eager=True, max_batch_size=8) as b:
        blocker = submit(b, 0)
        await until(lambda: b.in_flight == 1)
        good, bad, other = submit(b, 1), submit(b, -1), submit(b, 2)
        await until(lambda: b.queue_depth == 3)
        rec.gate.set()
        assert (await blocker).value == 0
        assert (await good).value == 2 and (await other).value == 4
        with pytest.raises(InferenceFailed, match="inference failed: ValueError") as e:
            await bad
        assert isinstance(e.value.__cause__, ValueError)
        assert rec.batches == [[0], [1, -1, 2]]


@pytest.mark.asyncio
async def test_an_earlier_deadline_than_queue_timeout_applies() -> None:
    rec = Recorder(held=True)
    async with started([rec], eager=True, queue_timeout=HUGE) as b:
        blocker = submit(b, 0)
        await until(lambda: b.in_flight == 1)
        loop = asyncio.get_running_loop()
        late = asyncio.create_task(b.submit(1, 1, deadline=loop.time() + 0.1))
        done, _ = await asyncio.wait([late], timeout=1)
        assert done, "the item must expire at its own deadline, not queue_timeout"
        with pytest.raises(QueueTimeout, match="not run within its deadline"):
            await late
        assert b.queue_depth == 0
        rec.gate.set()
        await blocker
        assert rec.batches == [[0]]


@pytest.mark.asyncio
async def test_a_deadline_already_past_is_refused_without_queueing() -> None:
    rec = Recorder()
    async with started([rec]) as b:
        past = asyncio.get_running_loop().time() - 1
        with pytest.raises(QueueTimeout, match="deadline passed before 't' could queue it"):
            await b.submit(1, 1, deadline=past)
        assert b.queue_depth == 0 and rec.batches == []
