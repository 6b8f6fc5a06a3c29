"""The batcher's run function for one engine instance: concatenate, run, score, split.

One :class:`Runner` per engine instance, each with its own thread, so the event loop never
blocks on inference and two instances of a model can run at once. Everything per image
happens here, in that thread, as array operations over the whole batch: one copy of the crops
into a batch buffer allocated once, one engine run, a finiteness check per row, softmax and
top-k for every row at once, one metrics update per batch.

With ``pad_to`` (the warmed batch sizes; on by default on the GPU) a batch runs padded up to
the next of those sizes, so the engine sees a handful of shapes, each on a session of its own
(``OrtEngine``): ONNX Runtime's CUDA provider re-plans every convolution when the input shape
changes, about 100 ms for ResNet50 (docs/BENCHMARKS.md, "GPU").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from contract.scores import Scores, score
from server.flow.cpubudget import CpuBudget
from server.metrics import Metrics
from server.threadname import name_os_thread

#: (instance, uint8 [N, H, W, 3]) -> float32 logits [N, C]; blocking. ``Engine.run``, or a
#: wrapper around it that tests use to inject faults.
EngineRun = Callable[[int, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Job:
    """One request's share of a batch: uint8 ``rows`` ``[n, H, W, 3]`` (C-contiguous) and the
    number of top classes it wants scored (0: logits only)."""

    rows: np.ndarray
    top_k: int = 0

    def __len__(self) -> int:
        return len(self.rows)


class NonFiniteLogits(FloatingPointError):
    """The model produced NaN or infinite logits for some rows of this payload."""


class Runner:
    """Runs batches of :class:`Job` on one engine instance.

    Awaiting the runner returns one :class:`~contract.scores.Scores` per job (its ``top_k``
    classes scored), or, for a job with a non-finite logit, a :class:`NonFiniteLogits` in its
    place (the other jobs of the batch are unaffected). An exception from the engine fails
    the whole batch, as does one that returns other than one row of logits per image.
    Each run holds ``threads`` cores of the process's :class:`~server.flow.cpubudget.CpuBudget`,
    so the threads doing work never outnumber the cores, across every model.
    """

    def __init__(
        self,
        model: str,
        run: EngineRun,
        instance: int,
        *,
        max_rows: int,
        input_shape: tuple[int, int, int],
        metrics: Metrics,
        budget: CpuBudget,
        threads: int,
        pad_to: Sequence[int] = (),
    ) -> None:
        self._model = model
        self._run = run
        self._instance = instance
        self._metrics = metrics
        self._budget = budget
        self._threads = threads
        self._buffer = np.empty((max_rows, *input_shape), dtype=np.uint8)
        self._pad_to = sorted(pad_to)
        if self._pad_to and self._pad_to[-1] != max_rows:
            raise ValueError(f"pad_to {self._pad_to} must end at max_rows {max_rows}")
        self._thread = ThreadPoolExecutor(
            1, thread_name_prefix=f"{model}-run{instance}", initializer=name_os_thread
        )

    async def __call__(self, jobs: Sequence[Job]) -> list[Scores | Exception]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._run_batch, jobs)

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    def _run_batch(self, jobs: Sequence[Job]) -> list[Scores | Exception]:
        rows = sum(len(j) for j in jobs)
        size = self._padded(rows)
        if len(jobs) == 1 and size == rows:
            batch = jobs[0].rows
        else:  # the one copy: every crop into the reused buffer
            np.concatenate([j.rows for j in jobs], out=self._buffer[:rows])
            # Rows past ``rows`` hold earlier crops: run, then dropped with their logits.
            batch = self._buffer[:size]
        with self._budget.hold(self._threads):
            start = time.monotonic()
            logits = self._run(self._instance, batch)
            seconds = time.monotonic() - start
        if logits.ndim != 2 or len(logits) != size:
            raise RuntimeError(f"engine returned logits of shape {logits.shape} for {size} rows")
        logits = logits[:rows]
        self._metrics.observe_batch(self._model, rows, seconds)
        finite = np.asarray(np.isfinite(logits).all(axis=1))
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite rows are dropped below
            scores = score(logits, max(j.top_k for j in jobs) or 1)
        results: list[Scores | Exception] = []
        offset = 0
        for job in jobs:
            end = offset + len(job)
            if finite[offset:end].all():
                results.append(scores.rows(offset, end).top(job.top_k))
            else:
                results.append(NonFiniteLogits(f"model {self._model} produced non-finite logits"))
            offset = end
        return results

    def _padded(self, rows: int) -> int:
        """The smallest ``pad_to`` size holding ``rows`` (``rows`` itself without padding)."""
        for size in self._pad_to:
            if size >= rows:
                return size
        return rows
