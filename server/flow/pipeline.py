"""The request path shared by ``/predict`` and the v2 protocol.

1. **admit** (before the body is read): the model's image budget (:mod:`server.flow.admission`)
   says yes, or the request gets a fast 503 having cost nothing;
2. **decode** in the preprocessing pool, each crop written straight into the request's
   ``[n, H, W, 3]`` array;
3. **submit** the rows to the model's batcher, which runs them (with other requests' rows)
   on an engine and scores them (:mod:`server.flow.runner`).

One deadline, set at admission, covers steps 2 and 3: a request not dispatched by then is
dropped with 503 ``queue_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from contract.errors import (
    ImageTooCostly,
    ImageTooLarge,
    InvalidImage,
    NotReady,
    QueueFull,
    QueueTimeout,
    ShuttingDown,
    UnsupportedImageFormat,
)
from contract.images.decode import DecodeLimits
from contract.images.preprocess import preprocess
from contract.modelmeta import Preprocessing
from contract.scores import Scores
from server.flow.admission import Ticket
from server.flow.batcher import Completed
from server.flow.cpubudget import CpuBudget
from server.flow.decodepool import DecodeBudget, DecodePool, decodes_inline
from server.flow.runner import Job
from server.metrics import Metrics
from server.models.repository import ServedModel
from server.settings import Settings
from server.threadname import name_os_thread

T = TypeVar("T")


@dataclass(frozen=True)
class Decoded:
    """A request's images as the model takes them: uint8 ``pixels`` ``[n, H, W, 3]``, and the
    seconds each took to decode and transform (float64 ``[n]``)."""

    pixels: np.ndarray
    seconds: np.ndarray


def _decode_into(
    data: bytes, spec: Preprocessing, limits: DecodeLimits, out: np.ndarray, metrics: Metrics,
    model: str, budget: CpuBudget, abandoned: threading.Event, workers: DecodePool | None,
    inline: bool,
) -> float:  # fmt: skip
    """Runs in the pool, on one core of the budget; timed once it has the core, so waiting
    for a thread or a core is not counted as decoding. Skipped (0 s) if its request was
    abandoned (failed, timed out, client gone) while it waited for the core. With
    ``workers``, the image (with ``inline``, only one not cheap by construction:
    ``decodes_inline``) is decoded by the thread's worker process, killed if the request is
    abandoned meanwhile or the decode passes its budget (ImageTooCostly)."""
    with budget.hold(1):
        if abandoned.is_set():
            return 0.0
        start = time.monotonic()
        if workers is None or (inline and decodes_inline(data, limits)):
            preprocess(data, spec, limits, out)
        elif not workers.worker().preprocess(data, spec, limits, out, abandoned):
            return 0.0
        seconds = time.monotonic() - start
    metrics.preprocess.labels(model).observe(seconds)
    return seconds


def _wait_quietly(barrier: threading.Barrier) -> None:
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(30)


class Pipeline:
    """Owns the preprocessing thread pool (and its decode worker processes); stateless
    otherwise."""

    def __init__(self, settings: Settings, metrics: Metrics, budget: CpuBudget) -> None:
        self._metrics = metrics
        self._budget = budget
        self._limits = DecodeLimits(
            max_pixels=settings.max_image_pixels, fast_jpeg=settings.fast_jpeg_decode,
            max_jpeg_scans=settings.max_jpeg_scans,
        )  # fmt: skip
        self._threads = settings.pool_threads
        self._pool: ThreadPoolExecutor | None = None
        self._parser: ThreadPoolExecutor | None = None
        self._decode_budget = DecodeBudget(
            base_cpu_s=settings.decode_cpu_base_ms / 1000,
            cpu_s_per_mpixel=settings.decode_cpu_ms_per_mpixel / 1000,
            memory_bytes=settings.decode_memory_bytes,
        )
        self._isolated = settings.decode_isolation != "thread"
        self._inline = settings.decode_isolation == "auto"
        self._workers: DecodePool | None = None

    def start(self) -> None:
        """Create the preprocessing threads (in the lifespan, so every run gets fresh ones),
        and, isolated, start each thread's decode worker in the background."""
        kills = self._metrics.decode_kills
        self._workers = (
            DecodePool(self._decode_budget, lambda reason: kills.labels(reason).inc())
            if self._isolated
            else None
        )
        workers = self._workers

        def init() -> None:
            name_os_thread()
            if workers is not None:
                workers.start_worker()

        self._pool = ThreadPoolExecutor(
            self._threads, thread_name_prefix="preprocess", initializer=init
        )
        self._parser = ThreadPoolExecutor(1, thread_name_prefix="parse", initializer=name_os_thread)
        # One task per thread, each waiting for the others: every thread (and its worker)
        # exists before the first image, which then pays no process start.
        barrier = threading.Barrier(self._threads)
        for _ in range(self._threads):
            self._pool.submit(_wait_quietly, barrier)

    async def parse(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the one parse thread, holding a core of the budget: a request
        body's parse (v2 JSON) never takes more than one core, nor more memory at once than
        one body's parse.

        Raises:
            NotReady: the pipeline is not running. Whatever ``fn`` raises.
        """
        if self._parser is None:
            raise NotReady("server is not running")

        def run() -> T:
            with self._budget.hold(1):
                return fn(*args)

        return await asyncio.get_running_loop().run_in_executor(self._parser, run)

    def close(self) -> None:
        if self._parser is not None:
            self._parser.shutdown(wait=False, cancel_futures=True)
            self._parser = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._workers is not None:
            self._workers.close()
            self._workers = None

    def admit(self, model: ServedModel, images: int = 1) -> Ticket:
        """Take ``images`` from ``model``'s budget before reading anything.

        Raises:
            QueueFull: the model has no room (503 + Retry-After; counted as rejected).
        """
        try:
            return model.admission.admit(images)
        except QueueFull as e:
            self._metrics.rejected.labels(model.name, e.code).inc()
            raise

    def grow(self, model: ServedModel, ticket: Ticket, images: int) -> None:
        """The request holds ``images`` more than admitted. Raises QueueFull as ``admit``."""
        try:
            ticket.grow(images)
        except QueueFull as e:
            self._metrics.rejected.labels(model.name, e.code).inc()
            raise

    async def decode(
        self, model: ServedModel, ticket: Ticket, items: list[bytes], element: str = ""
    ) -> Decoded:
        """Decode and transform ``items`` in parallel into one ``[n, H, W, 3]`` array.

        ``element``: a message prefix naming the failing item, formatted with its index
        ``i`` (e.g. ``"input 'image_bytes' element {i}: "``).

        Raises:
            InvalidImage, UnsupportedImageFormat, ImageTooLarge, ImageTooCostly: from ``preprocess`` (the
                first failing image; the others are cancelled or discarded).
            QueueTimeout: the deadline passed while decoding.
        """
        if self._pool is None:
            raise NotReady("server is not running")
        spec = model.meta.preprocessing
        pixels = np.empty((len(items), *model.engine.input_shape), dtype=np.uint8)
        loop = asyncio.get_running_loop()
        abandoned = threading.Event()
        futures = [
            loop.run_in_executor(self._pool, _decode_into, data, spec, self._limits, pixels[i],
                                 self._metrics, model.name, self._budget, abandoned,
                                 self._workers, self._inline)
            for i, data in enumerate(items)
        ]  # fmt: skip
        try:
            async with asyncio.timeout_at(ticket.deadline):
                seconds = await asyncio.gather(*futures)
        except (InvalidImage, UnsupportedImageFormat, ImageTooLarge, ImageTooCostly) as e:
            if not element:
                raise
            i = next(i for i, f in enumerate(futures) if f.done() and f.exception() is e)
            raise type(e)(element.format(i=i) + e.message) from None
        except TimeoutError:
            self._count_timeout(model)
            raise QueueTimeout(
                f"not decoded and queued within {model.admission.timeout:g} s; dropped"
            ) from None
        finally:
            # A failure or timeout: what has not started never will, and what waits for a
            # core skips its work (on success every decode is done, so this changes nothing).
            abandoned.set()
            for f in futures:
                f.cancel()
        return Decoded(pixels, np.asarray(seconds, dtype=np.float64))

    async def submit(
        self, model: ServedModel, ticket: Ticket, rows: np.ndarray, top_k: int
    ) -> Completed[Scores]:
        """Queue ``rows`` (uint8 ``[N, H, W, 3]``, N <= max batch) and wait for their scores.

        Raises:
            QueueFull, QueueTimeout, ShuttingDown: the request was not run (503).
            InferenceFailed: the batch failed, or these rows gave non-finite logits (500).
        """
        ticket.queued()
        try:
            done = await model.batcher.submit(Job(rows, top_k), len(rows), ticket.deadline)
        except (QueueFull, QueueTimeout, ShuttingDown) as e:
            if ticket.refused:  # another chunk of this request was refused: counted once
                raise
            ticket.refused = True
            if isinstance(e, QueueTimeout):
                self._count_timeout(model)
            else:
                self._metrics.rejected.labels(model.name, e.code).inc()
            raise
        self._metrics.queue_wait.labels(model.name).observe(done.queue_seconds)
        ticket.completed(len(rows))
        return done

    def _count_timeout(self, model: ServedModel) -> None:
        self._metrics.rejected.labels(model.name, QueueTimeout.code).inc()
        # It did wait: keep overload visible in the histogram.
        self._metrics.queue_wait.labels(model.name).observe(model.admission.timeout)
