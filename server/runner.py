"""The batcher's run function for one engine instance: concatenate, run, split.

One :class:`Runner` per engine instance, each with its own thread, so the event loop never
blocks on inference and two instances of a model can run at once. Everything per image
happens here, in that thread, as array operations: one copy of the crops into a batch buffer
allocated once, one engine run, a finiteness check per row, one metrics update per batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .metrics import Metrics

#: (instance, uint8 [N, H, W, 3]) -> float32 logits [N, C]; blocking. ``Engine.run``, or a
#: wrapper around it that tests use to inject faults.
EngineRun = Callable[[int, np.ndarray], np.ndarray]


class NonFiniteLogits(FloatingPointError):
    """The model produced NaN or infinite logits for some rows of this payload."""


class Runner:
    """Runs batches of payloads (uint8 ``[n_i, H, W, 3]`` each) on one engine instance.

    Awaiting the runner returns one float32 ``[n_i, C]`` array per payload, or, for a payload
    with a non-finite logit, a :class:`NonFiniteLogits` in its place (the other payloads of
    the batch are unaffected). An exception from the engine fails the whole batch.
    ``compute`` bounds how many engine runs execute at once across every model of the
    process, so inference threads never outnumber the cores budgeted for them.
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
        compute: threading.Semaphore,
    ) -> None:
        self._model = model
        self._run = run
        self._instance = instance
        self._metrics = metrics
        self._compute = compute
        self._buffer = np.empty((max_rows, *input_shape), dtype=np.uint8)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"{model}-run{instance}")

    async def __call__(self, payloads: Sequence[np.ndarray]) -> list[np.ndarray | Exception]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._run_batch, payloads)

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    def _run_batch(self, payloads: Sequence[np.ndarray]) -> list[np.ndarray | Exception]:
        rows = sum(len(p) for p in payloads)
        if len(payloads) == 1:
            batch = payloads[0]
        else:  # the one copy: every crop into the reused buffer
            batch = np.concatenate(payloads, out=self._buffer[:rows])
        with self._compute:
            start = time.monotonic()
            logits = self._run(self._instance, batch)
            seconds = time.monotonic() - start
        self._metrics.observe_batch(self._model, rows, seconds)
        finite = np.asarray(np.isfinite(logits).all(axis=1))
        results: list[np.ndarray | Exception] = []
        offset = 0
        for payload in payloads:
            part = logits[offset : offset + len(payload)]
            if finite[offset : offset + len(payload)].all():
                results.append(part)
            else:
                results.append(NonFiniteLogits(f"model {self._model} produced non-finite logits"))
            offset += len(payload)
        return results
