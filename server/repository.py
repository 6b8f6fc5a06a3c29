"""The set of served models: discovery, load, warm-up, batcher start, and bounded stop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .batcher import BatchConfig, Batcher, RunFn
from .errors import NotReady, UnknownModel
from .metrics import Metrics
from .runtime import ModelRuntime
from .settings import Settings

log = logging.getLogger(__name__)

# (instance, images uint8 [N,H,W,3]) -> logits float32 [N,C]; blocking.
InferFn = Callable[[int, np.ndarray], np.ndarray]


@dataclass
class ServedModel:
    """One model as served: its runtime, its batcher, and whether it may take traffic."""

    name: str
    runtime: ModelRuntime
    batcher: Batcher[np.ndarray, np.ndarray]
    config: BatchConfig
    executors: list[ThreadPoolExecutor] = field(default_factory=list)
    load_seconds: float = 0.0
    ready: bool = False
    not_ready_reason: str = "loading"

    @property
    def version(self) -> str:
        return "1"


def batch_config(settings: Settings, provider: str) -> BatchConfig:
    """``auto`` batching is eager on CPU (waiting buys no throughput there, see
    docs/BATCHING.md) and delay-based on GPU, where fuller batches are much cheaper per image."""
    eager = settings.batching == "eager" or (settings.batching == "auto" and provider == "cpu")
    return BatchConfig(
        max_batch_size=settings.max_batch_size,
        max_queue_delay=settings.max_queue_delay_ms / 1000,
        max_queue_size=settings.max_queue_size,
        queue_timeout=settings.queue_timeout_ms / 1000,
        eager=eager,
    )


def discover(settings: Settings) -> dict[str, Path]:
    """Model name -> file. ``settings.models`` empty means every ``*.onnx`` in the directory.

    Raises:
        FileNotFoundError: a named model has no file, or the directory holds none.
    """
    found = {p.stem: p for p in sorted(settings.model_dir.glob("*.onnx"))}
    wanted = settings.models or list(found)
    missing = [m for m in wanted if m not in found]
    if missing or not wanted:
        raise FileNotFoundError(
            f"no model file for {missing or 'any model'} in {settings.model_dir}; export with "
            f"`python -m export resnet18 resnet50 --out-dir {settings.model_dir}`"
        )
    return {m: found[m] for m in wanted}


def _make_runner(
    name: str, infer: InferFn, instance: int, executor: ThreadPoolExecutor, metrics: Metrics
) -> RunFn[np.ndarray, np.ndarray]:
    def execute(payloads: Sequence[np.ndarray]) -> tuple[np.ndarray, float]:
        # In the instance's thread: the concatenation copy stays off the event loop, and the
        # time measured is the run itself, not the wait for the thread.
        batch = payloads[0] if len(payloads) == 1 else np.concatenate(payloads)
        start = time.monotonic()
        logits = infer(instance, batch)
        seconds = time.monotonic() - start
        if not np.isfinite(logits).all():
            raise FloatingPointError(f"model {name} produced non-finite logits")
        return logits, seconds

    async def run(payloads: Sequence[np.ndarray]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        logits, seconds = await loop.run_in_executor(executor, execute, payloads)
        metrics.observe_batch(name, len(logits), seconds)
        return np.split(logits, np.cumsum([len(p) for p in payloads[:-1]]))

    return run


class ModelRepository:
    """Holds every ``ServedModel``; ``get`` is the only lookup routes use."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        infer_wrapper: Callable[[InferFn], InferFn] | None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._wrap = infer_wrapper
        self.models: dict[str, ServedModel] = {}
        self.configured: frozenset[str] = frozenset()
        """names that will be served (known from the start of loading): metric labels, and
        503 rather than 404 while one of them is still loading"""

    def get(self, name: str) -> ServedModel:
        """The loaded model ``name``.

        Raises:
            UnknownModel: not a configured model (404).
            NotReady: configured but still loading (503).
        """
        model = self.models.get(name)
        if model is not None:
            return model
        if name in self.configured:
            raise NotReady(f"model {name!r} is loading")
        raise UnknownModel(f"unknown model {name[:64]!r}; served models: {sorted(self.configured)}")

    def get_ready(self, name: str) -> ServedModel:
        """As ``get``, and the model may take inference traffic (else NotReady, 503)."""
        model = self.get(name)
        if not model.ready:
            raise NotReady(f"model {name!r} not ready: {model.not_ready_reason}")
        return model

    @property
    def ready(self) -> bool:
        return bool(self.models) and all(m.ready for m in self.models.values())

    async def load_all(self) -> None:
        found = discover(self._settings)
        self.configured = frozenset(found)
        for name, path in found.items():
            self.models[name] = await self._load(name, path)

    async def _load(self, name: str, path: Path) -> ServedModel:
        s, start = self._settings, time.monotonic()
        runtime = await asyncio.to_thread(ModelRuntime, name, path, s)
        infer: InferFn = runtime.run if self._wrap is None else self._wrap(runtime.run)
        executors = [
            ThreadPoolExecutor(1, thread_name_prefix=f"{name}-infer{i}")
            for i in range(runtime.instances)
        ]
        runners = [
            _make_runner(name, infer, i, ex, self._metrics) for i, ex in enumerate(executors)
        ]
        config = batch_config(s, runtime.provider.actual)
        batcher: Batcher[np.ndarray, np.ndarray] = Batcher(runners, config, name=name)
        model = ServedModel(name, runtime, batcher, config, executors)
        await asyncio.to_thread(runtime.warmup, s.warmup_sizes)
        await batcher.start()
        model.load_seconds = time.monotonic() - start
        self._publish(model)
        if runtime.provider.fallback and not s.allow_cpu_fallback:
            model.not_ready_reason = "CUDA requested but the session fell back to CPU"
        else:
            model.ready, model.not_ready_reason = True, ""
        log.info(
            "model %s loaded: %s weights=%s provider=%s in %.2fs (warm-up sizes %s)",
            name, runtime.meta.architecture, runtime.meta.weights, runtime.provider.actual,
            model.load_seconds, s.warmup_sizes,
        )  # fmt: skip
        if runtime.meta.random_weights:
            log.warning(
                "model %s has RANDOM weights (%s): its predictions are meaningless; export "
                "ImageNet weights with `python -m export %s --weights imagenet`",
                name, runtime.meta.weights_detail, runtime.meta.architecture,
            )  # fmt: skip
        return model

    def _publish(self, model: ServedModel) -> None:
        m, rt = self._metrics, model.runtime
        m.model_load.labels(model.name).set(model.load_seconds)
        m.model_info.labels(
            model=model.name,
            architecture=rt.meta.architecture,
            weights=rt.meta.weights,
            random_weights=str(rt.meta.random_weights).lower(),
            provider=rt.provider.actual,
            requested_provider=rt.provider.requested,
            fallback=str(rt.provider.fallback).lower(),
        ).set(1)
        batcher = model.batcher
        m.track_queue_depth(model.name, lambda: batcher.queue_depth)

    async def stop(self, drain_timeout: float) -> None:
        """Drain every batcher concurrently (bounded), then release the inference threads."""
        for m in self.models.values():
            m.ready, m.not_ready_reason = False, "shutting down"
        await asyncio.gather(*(m.batcher.stop(drain_timeout) for m in self.models.values()))
        for m in self.models.values():
            for ex in m.executors:
                ex.shutdown(wait=False, cancel_futures=True)
