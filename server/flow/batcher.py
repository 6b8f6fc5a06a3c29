"""Dynamic batching: many concurrent requests, few calls to a runner.

Callers ``await batcher.submit(payload, rows)``; each item waits in one FIFO queue until a
dispatcher (a task per runner, i.e. per model instance) takes a batch of items from the head and
awaits its runner once for all of them. The batcher is plain asyncio: it imports no web
framework and no runtime, and never blocks the event loop (the runner is awaited; the real
one, :class:`server.flow.runner.Runner`, hands the engine run to a thread).

Timing: deadlines (``max_queue_delay``, ``queue_timeout``) are scheduled on the event loop's
monotonic clock; reported durations (:class:`Completed`) come from the injected ``clock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeAlias, TypeVar

from contract.errors import InferenceFailed, QueueFull, QueueTimeout, ShuttingDown

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

RunBatch: TypeAlias = Callable[[Sequence[T]], Awaitable[Sequence[R | Exception]]]
"""Takes the payloads of one batch, returns one result per payload, in the same order; an
exception in place of a result fails that item alone (InferenceFailed), not its batch."""


@dataclass(frozen=True)
class BatchConfig:
    """How batches are formed. Sizes count rows (images); times are in seconds.

    Raises ``ValueError`` on construction if a value is out of range.
    """

    max_batch_size: int = 32
    """Most rows in one run, >= 1."""
    max_queue_delay: float = 0.005
    """Delay policy: longest the oldest waiting item waits for a fuller batch, >= 0 s."""
    max_queue_size: int = 256
    """Most rows waiting (not running); >= max_batch_size. Past it ``submit`` raises QueueFull."""
    queue_timeout: float = 5.0
    """Longest an item may wait to be dispatched before QueueTimeout, > max_queue_delay s."""
    eager: bool = True
    """True: an idle dispatcher takes whatever is waiting at once; False: full batch or delay."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if not (math.isfinite(self.max_queue_delay) and self.max_queue_delay >= 0):
            raise ValueError(
                f"max_queue_delay must be finite and >= 0 s, got {self.max_queue_delay}"
            )
        if self.max_queue_size < self.max_batch_size:
            raise ValueError(
                f"max_queue_size ({self.max_queue_size}) must be >= max_batch_size "
                f"({self.max_batch_size})"
            )
        if not (math.isfinite(self.queue_timeout) and self.queue_timeout > self.max_queue_delay):
            raise ValueError(
                f"queue_timeout must be finite and > max_queue_delay ({self.max_queue_delay} s), "
                f"got {self.queue_timeout}"
            )


@dataclass(frozen=True)
class Completed(Generic[R]):
    """One item's result and how it was served. Times in seconds (injected clock)."""

    value: R
    queue_seconds: float
    """From enqueue to dispatch."""
    run_seconds: float
    """Duration of the batch run this item was in."""
    batch_rows: int
    """Total rows in that run."""


@dataclass(eq=False)
class _Item(Generic[T, R]):
    payload: T
    rows: int
    future: asyncio.Future[Completed[R]]
    enqueued: float  # injected clock
    enqueued_loop: float  # loop.time(), for deadlines
    timer: asyncio.TimerHandle | None = None
    queued: bool = True
    dispatched: float = 0.0


class _State(Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Batcher(Generic[T, R]):
    """A FIFO queue of items served in batches by one dispatcher task per runner."""

    def __init__(
        self,
        runners: Sequence[RunBatch[T, R]],
        config: BatchConfig,
        *,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``runners``: one runner per instance (>= 1, else ValueError)."""
        if not runners:
            raise ValueError("Batcher needs at least one runner")
        self._runners = list(runners)
        self._config = config
        self._name = name
        self._clock = clock
        self._queue: deque[_Item[T, R]] = deque()
        self._queued_rows = 0
        self._in_flight = 0
        self._state = _State.NEW
        self._dispatchers: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()
        self._stopped = asyncio.Event()

    @property
    def queue_depth(self) -> int:
        """Rows waiting to be dispatched (not running)."""
        return self._queued_rows

    @property
    def in_flight(self) -> int:
        """Rows in batches currently executing."""
        return self._in_flight

    @property
    def running(self) -> bool:
        """True between :meth:`start` and the beginning of :meth:`stop`."""
        return self._state is _State.RUNNING

    async def start(self) -> None:
        """Start one dispatcher task per runner on the running loop. RuntimeError if not new."""
        if self._state is not _State.NEW:
            raise RuntimeError(f"batcher {self._name!r} already started")
        self._state = _State.RUNNING
        self._dispatchers = [
            asyncio.create_task(self._dispatch_loop(runner), name=f"batcher-{self._name}-{i}")
            for i, runner in enumerate(self._runners)
        ]

    async def submit(
        self, payload: T, rows: int = 1, deadline: float | None = None
    ) -> Completed[R]:
        """Queue ``payload`` (``rows`` images) and wait for its result.

        ``deadline``: event-loop time by which the item must be dispatched (for a deadline
        that began before the item reached the queue); the earlier of it and
        ``queue_timeout`` from now applies.

        Raises ValueError (rows outside 1..max_batch_size), ShuttingDown (not running),
        QueueFull (no room; nothing queued), QueueTimeout (not dispatched by its deadline;
        never run), InferenceFailed (its batch failed, or its own result was an exception).
        If the caller is cancelled while queued, the item leaves the queue and is never run.
        """
        cfg = self._config
        if not 1 <= rows <= cfg.max_batch_size:
            raise ValueError(f"rows must be in 1..{cfg.max_batch_size}, got {rows}")
        if self._state is not _State.RUNNING:
            raise ShuttingDown(f"batcher {self._name!r} is not accepting work")
        if self._queued_rows + rows > cfg.max_queue_size:
            raise QueueFull(f"queue of {self._name!r} is full ({cfg.max_queue_size} images)")
        loop = asyncio.get_running_loop()
        now = loop.time()
        expires = (
            now + cfg.queue_timeout if deadline is None else min(deadline, now + cfg.queue_timeout)
        )
        if expires <= now:
            raise QueueTimeout(f"deadline passed before {self._name!r} could queue it; dropped")
        item: _Item[T, R] = _Item(payload, rows, loop.create_future(), self._clock(), now)
        item.timer = loop.call_at(expires, self._expire, item)
        self._queue.append(item)
        self._queued_rows += rows
        self._notify()
        try:
            return await item.future
        finally:
            if item.queued:  # cancelled while waiting: free the slot
                self._remove(item)

    async def stop(self, drain_timeout: float) -> None:
        """Stop accepting work, drain for up to ``drain_timeout`` s, then cancel the dispatchers.

        Items still queued or running after the drain fail with ShuttingDown. Idempotent;
        a concurrent second call waits for the first to finish.
        """
        if self._state in (_State.STOPPING, _State.STOPPED):
            await self._stopped.wait()
            return
        self._state = _State.STOPPING
        self._notify()  # delay-policy dispatchers flush without waiting
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_timeout):
                    while self._queue or self._in_flight:
                        await self._changed.wait()
        finally:  # even if stop() itself is cancelled, leave nothing running or waiting
            for task in self._dispatchers:
                task.cancel()
            await asyncio.gather(*self._dispatchers, return_exceptions=True)
            while self._queue:
                item = self._queue[0]
                self._remove(item)
                if not item.future.done():
                    item.future.set_exception(ShuttingDown(f"batcher {self._name!r} stopped"))
            self._state = _State.STOPPED
            self._stopped.set()

    # -- internals --------------------------------------------------------------------------

    def _notify(self) -> None:
        """Wake every task waiting for a change of queue or in-flight state."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _remove(self, item: _Item[T, R]) -> None:
        self._queue.remove(item)
        self._queued_rows -= item.rows
        item.queued = False
        if item.timer is not None:
            item.timer.cancel()
        self._notify()

    def _expire(self, item: _Item[T, R]) -> None:
        if item.queued:
            self._remove(item)
            if not item.future.done():
                item.future.set_exception(
                    QueueTimeout(
                        f"not run within its deadline (queue_timeout {self._config.queue_timeout:g}"
                        " s); dropped"
                    )
                )

    def _head_is_full(self) -> bool:
        """True if no further item could join the batch the head of the queue would form."""
        rows = 0
        for item in self._queue:
            if rows + item.rows > self._config.max_batch_size:
                return True
            rows += item.rows
        return rows == self._config.max_batch_size

    async def _next_batch(self) -> list[_Item[T, R]]:
        """Wait until the policy says dispatch, then take a batch (no await after taking)."""
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                await self._changed.wait()
                continue
            if self._config.eager or self._state is not _State.RUNNING or self._head_is_full():
                return self._take()
            wait = self._queue[0].enqueued_loop + self._config.max_queue_delay - loop.time()
            if wait <= 0:
                return self._take()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._changed.wait()

    def _take(self) -> list[_Item[T, R]]:
        batch: list[_Item[T, R]] = []
        rows = 0
        now = self._clock()
        while self._queue and rows + self._queue[0].rows <= self._config.max_batch_size:
            item = self._queue.popleft()
            self._queued_rows -= item.rows
            item.queued = False
            if item.timer is not None:
                item.timer.cancel()
            if item.future.done():
                continue
            item.dispatched = now
            batch.append(item)
            rows += item.rows
        self._in_flight += rows
        return batch

    async def _dispatch_loop(self, runner: RunBatch[T, R]) -> None:
        while True:
            try:
                batch = await self._next_batch()
                if batch:
                    await self._dispatch(runner, batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the loop die: later callers would wait forever
                log.exception("batcher %r: unexpected error in dispatch loop", self._name)
                await asyncio.sleep(0)

    async def _dispatch(self, runner: RunBatch[T, R], batch: list[_Item[T, R]]) -> None:
        rows = sum(item.rows for item in batch)
        start = self._clock()
        try:
            results = await runner([item.payload for item in batch])
            if len(results) != len(batch):
                raise ValueError(
                    f"runner returned {len(results)} results for {len(batch)} payloads"
                )
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # we are being stopped
                self._fail(batch, lambda: ShuttingDown(f"batcher {self._name!r} stopped"))
                raise
            self._fail_batch(batch, exc, rows)  # the runner cancelled itself
        except Exception as exc:
            self._fail_batch(batch, exc, rows)
        else:
            run_seconds = self._clock() - start
            for item, value in zip(batch, results, strict=True):
                if item.future.done():
                    continue
                if isinstance(value, Exception):  # this item failed, the rest of its batch not
                    log.error("batcher %r: one item of a batch failed: %s", self._name, value)
                    item.future.set_exception(self._failure(value))
                    continue
                item.future.set_result(
                    Completed(value, item.dispatched - item.enqueued, run_seconds, rows)
                )
        finally:
            self._in_flight -= rows
            self._notify()

    def _fail_batch(self, batch: list[_Item[T, R]], exc: BaseException, rows: int) -> None:
        log.exception("batcher %r: batch of %d rows failed", self._name, rows, exc_info=exc)
        self._fail(batch, lambda: self._failure(exc))

    @staticmethod
    def _failure(exc: BaseException) -> InferenceFailed:
        err = InferenceFailed(f"inference failed: {type(exc).__name__}")
        err.__cause__ = exc
        return err

    def _fail(self, batch: list[_Item[T, R]], error: Callable[[], Exception]) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(error())
