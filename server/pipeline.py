"""The request path shared by ``/predict`` and the v2 protocol: preprocess off the event
loop in a bounded pool, then queue rows on the model's batcher, counting what happens."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .batcher import Completed
from .errors import NotReady, QueueFull, QueueTimeout, ShuttingDown
from .metrics import Metrics
from .modelmeta import Preprocessing
from .preprocess import DecodeLimits, preprocess
from .repository import ServedModel
from .settings import Settings


@dataclass(frozen=True)
class Preprocessed:
    """One image as the model takes it: uint8 ``[H, W, 3]``; ``seconds`` spent decoding it."""

    pixels: np.ndarray
    seconds: float


def _timed_preprocess(data: bytes, spec: Preprocessing, limits: DecodeLimits) -> Preprocessed:
    """Runs in the pool; timed here so waiting for a free thread is not counted as decoding."""
    start = time.monotonic()
    pixels = preprocess(data, spec, limits)
    return Preprocessed(pixels, time.monotonic() - start)


class Pipeline:
    """Owns the preprocessing thread pool; stateless otherwise."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._metrics = metrics
        self._limits = DecodeLimits(
            max_pixels=settings.max_image_pixels, fast_jpeg=settings.fast_jpeg_decode
        )
        self._threads = settings.pool_threads
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Create the preprocessing threads (in the lifespan, so every run gets fresh ones)."""
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="preprocess")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def preprocess(self, model: ServedModel, data: bytes) -> Preprocessed:
        """Decode and transform one encoded image.

        Raises:
            InvalidImage, UnsupportedImageFormat, ImageTooLarge: from ``preprocess``.
        """
        spec = model.meta.preprocessing
        if self._pool is None:
            raise NotReady("server is not running")
        done = await asyncio.get_running_loop().run_in_executor(
            self._pool, _timed_preprocess, data, spec, self._limits
        )
        self._metrics.preprocess.labels(model.name).observe(done.seconds)
        return done

    async def preprocess_many(self, model: ServedModel, items: list[bytes]) -> list[Preprocessed]:
        return list(await asyncio.gather(*(self.preprocess(model, d) for d in items)))

    async def infer(self, model: ServedModel, rows: np.ndarray) -> Completed[np.ndarray]:
        """Queue ``rows`` (uint8 ``[N, H, W, 3]``, N <= max batch) and wait for their logits.

        Raises:
            QueueFull, QueueTimeout, ShuttingDown: the request was not run (503).
            InferenceFailed: the batch failed (500).
        """
        try:
            done = await model.batcher.submit(rows, rows=len(rows))
        except (QueueFull, QueueTimeout, ShuttingDown) as e:
            self._metrics.rejected.labels(model.name, e.code).inc()
            if isinstance(e, QueueTimeout):  # it did wait: keep overload visible in the histogram
                self._metrics.queue_wait.labels(model.name).observe(model.config.queue_timeout)
            raise
        self._metrics.queue_wait.labels(model.name).observe(done.queue_seconds)
        return done
