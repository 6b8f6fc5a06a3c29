"""The request path every front door (``/predict``, v2 REST, gRPC) enters once:
:meth:`Pipeline.infer`.

1. **admit** (before the body is read): the model's image budget (:mod:`server.flow.admission`)
   says yes, or the request gets a fast 503 having cost nothing;
2. **read**: the front door reads and parses its request (its own code); a model with the
   response cache (:mod:`server.flow.respcache`) answers a repeated request here, and
   otherwise the admission **grows** to the request's images;
3. **decode** in the preprocessing pool, each crop written straight into the request's
   ``[n, H, W, 3]`` array;
4. **submit** the rows to the model's batcher in chunks of at most one batch, accepted or
   refused together, which runs them (with other requests' rows) on an engine and scores them
   (:mod:`server.flow.runner`).

One deadline, set at admission (reset when the body has arrived), covers steps 3 and 4: a
request not dispatched by then is dropped with 503 ``queue_timeout``. Every refusal is counted
here, once per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from contract.errors import (
    DeadlineExceeded,
    ImageTooCostly,
    ImageTooLarge,
    InvalidImage,
    NotReady,
    QueueFull,
    QueueTimeout,
    ShuttingDown,
    UnsupportedImageFormat,
)
from contract.images.decode import DecodeLimits, preload
from contract.images.preprocess import preprocess
from contract.modelmeta import Preprocessing
from contract.scores import Scores
from server.flow.admission import Ticket
from server.flow.batcher import Completed
from server.flow.cpubudget import CpuBudget
from server.flow.decodepool import DecodeBudget, DecodePool, decodes_inline
from server.flow.respcache import ResponseCache, lookup
from server.flow.runner import Job
from server.metrics import Metrics
from server.models.repository import ServedModel
from server.settings import Settings
from server.threadname import name_os_thread

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Decoded:
    """A request's images as the model takes them: uint8 ``pixels`` ``[n, H, W, 3]``, and the
    seconds each took to decode and transform (float64 ``[n]``)."""

    pixels: np.ndarray
    seconds: np.ndarray


@dataclass(frozen=True)
class Images:
    """What a front door read from one request: ``rows`` (uint8 ``[n, H, W, 3]``, the model's
    own tensor) or ``encoded`` images to decode, and the classes to rank per row (``top_k``).
    ``element``: a message prefix naming a failing encoded image, formatted with its index
    ``i`` (e.g. ``"input 'image_bytes' element {i}: "``)."""

    top_k: int
    rows: np.ndarray | None = None
    encoded: list[bytes] = field(default_factory=list)
    element: str = ""

    @property
    def count(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.encoded)


@dataclass(frozen=True)
class Inferred:
    """A request's answer: per chunk of at most one batch, its rows and their scores (in
    request order), and the seconds each image took to decode (float64 ``[n]``; 0 for rows
    sent as a tensor)."""

    parts: list[tuple[slice, Completed[Scores]]]
    seconds: np.ndarray

    @property
    def scores(self) -> Scores:
        """Every row's scores, in request order."""
        if len(self.parts) == 1:
            return self.parts[0][1].value
        values = [done.value for _, done in self.parts]
        return Scores(
            np.concatenate([v.logits for v in values]),
            np.concatenate([v.indices for v in values]),
            np.concatenate([v.probabilities for v in values]),
        )


async def all_or_none(parts: Iterable[Awaitable[T]]) -> list[T]:
    """Await every part; if one fails, cancel the others (freeing their queue slots) and
    re-raise that failure. ``asyncio.gather`` alone would leave them queued and running."""
    parts = list(parts)
    if len(parts) == 1:  # nothing to cancel beside it: no task, no gather (two loop trips)
        return [await parts[0]]
    tasks = [asyncio.ensure_future(p) for p in parts]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _unguarded(work: Awaitable[T]) -> T:
    return await work


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _decode_into(
    data: bytes,
    spec: Preprocessing,
    limits: DecodeLimits,
    out: np.ndarray,
    metrics: Metrics,
    model: str,
    budget: CpuBudget,
    abandoned: threading.Event,
    workers: DecodePool | None,
    inline: bool,
) -> float:
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

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        budget: CpuBudget,
        cache: ResponseCache | None = None,
    ) -> None:
        """``cache``: the response cache, for the models that opted in (None: off)."""
        self._metrics = metrics
        self._cache = cache
        self._budget = budget
        self._limits = DecodeLimits(
            max_pixels=settings.max_image_pixels,
            fast_jpeg=settings.fast_jpeg_decode,
            max_jpeg_scans=settings.max_jpeg_scans,
        )
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
        preload()  # no request pays Pillow's import of a format's plugin
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

    async def infer(
        self,
        model: ServedModel,
        read: Callable[[Ticket], Awaitable[tuple[R, Images]]],
        *,
        guard: Callable[[Awaitable[Inferred]], Awaitable[Inferred]] = _unguarded,
        deadline: float | None = None,
    ) -> tuple[R, Inferred]:
        """The one way into the pipeline: admit one image of ``model``'s budget, ``read`` the
        request, grow to its images, decode them, and run them in chunks of at most one
        batch, all or none.

        ``read(ticket)``: the front door reads and parses its request (calling
        ``ticket.body_complete()`` once a body has arrived); returns what the door keeps for
        its answer and the request's :class:`Images`. ``guard``: wraps the work after
        reading (REST: cancelled when the client disconnects). ``deadline``: the caller's own
        (event-loop time, a gRPC call's), when sooner than queue_timeout's; a request it
        drops raises DeadlineExceeded rather than QueueTimeout.

        Raises:
            QueueFull: no room for the request's images (503; counted as rejected).
            QueueTimeout, DeadlineExceeded: not run in time (counted as rejected).
            InvalidImage, UnsupportedImageFormat, ImageTooLarge, ImageTooCostly: an image.
            ShuttingDown, InferenceFailed: from the batcher. Whatever ``read`` raises.
        """
        with self._admit(model) as ticket:  # before a byte of the request is read
            callers = deadline is not None and deadline < ticket.deadline
            if deadline is not None and callers:
                ticket.deadline = deadline
            kept, images = await read(ticket)
            given = images.rows if images.rows is not None else images.encoded
            key, hit = await lookup(self._cache, model, given, images.top_k)
            if hit is not None:  # nothing decoded, queued or run: timings 0
                n = images.count
                return kept, Inferred([(slice(0, n), Completed(hit, 0.0, 0.0, 0))], np.zeros(n))
            self._grow(model, ticket, images.count - 1)
            try:
                inferred = await guard(self._run(model, ticket, images))
                # A version retired meanwhile had its entries dropped: storing this one would
                # only hold bytes no request can ever hit (its key names the retired load).
                if key is not None and self._cache is not None and not model.draining:
                    self._cache.put(key, inferred.scores)
                return kept, inferred
            except QueueTimeout:
                if not callers:
                    raise
                raise DeadlineExceeded(
                    "the call's deadline passed before the request was run; dropped"
                ) from None

    async def _run(self, model: ServedModel, ticket: Ticket, images: Images) -> Inferred:
        rows, seconds = images.rows, np.zeros(images.count)
        if rows is None:
            decoded = await self._decode(model, ticket, images.encoded, images.element)
            rows, seconds = decoded.pixels, decoded.seconds
        chunks = _chunks(len(rows), model.config.max_batch_size)
        work = all_or_none(self._submit(model, ticket, rows[c], images.top_k) for c in chunks)
        return Inferred(list(zip(chunks, await work, strict=True)), seconds)

    def _admit(self, model: ServedModel, images: int = 1) -> Ticket:
        """Take ``images`` from ``model``'s budget before reading anything.

        Raises:
            QueueFull: the model has no room (503 + Retry-After; counted as rejected).
        """
        try:
            return model.admission.admit(images)
        except QueueFull as e:
            self._metrics.rejected.labels(model.name, e.code).inc()
            raise

    def _grow(self, model: ServedModel, ticket: Ticket, images: int) -> None:
        """The request holds ``images`` more than admitted. Raises QueueFull as ``_admit``."""
        try:
            ticket.grow(images)
        except QueueFull as e:
            self._metrics.rejected.labels(model.name, e.code).inc()
            raise

    async def _decode(
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
            loop.run_in_executor(
                self._pool,
                _decode_into,
                data,
                spec,
                self._limits,
                pixels[i],
                self._metrics,
                model.name,
                self._budget,
                abandoned,
                self._workers,
                self._inline,
            )
            for i, data in enumerate(items)
        ]
        try:
            async with asyncio.timeout_at(ticket.deadline):
                # One image (most requests): awaited as it is, without gather's extra trip
                # round the event loop.
                seconds = (
                    [await futures[0]] if len(futures) == 1 else await asyncio.gather(*futures)
                )
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

    async def _submit(
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
