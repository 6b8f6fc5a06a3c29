"""The limits of this machine, the denominators of every ratio in the report.

* the raw engine: images/s and latency per batch size for each variant (provider x
  precision), opened exactly as the server opens it, the variants and batch sizes interleaved;
* preprocessing alone: decode + resize + crop, ms per image, per photo size;
* the in-process pipeline: the server's preprocessing and engine calls with no HTTP, both as a
  sequential loop (latency denominator) and as a thread pool overlapping batched inference
  (throughput ceiling: uses both cores, as the server does);
* the FLOP rate: MACs/image x images/s against an estimate of the CPU's peak (fp32).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from contract.cpuinfo import read_cpuinfo
from contract.images.preprocess import DecodeLimits, preprocess
from contract.modelmeta import ModelMetadata
from server.models.engines import EngineOptions, EngineReport, open_engine

from .images import Photo
from .timing import median, percentile, time_calls
from .variants import Variant

#: Multiply-accumulates per 224x224 image (torchvision's published GFLOPS, which count MACs).
MACS_PER_IMAGE = {"resnet18": 1.814e9, "resnet50": 4.089e9}


@dataclass(frozen=True)
class EnginePoint:
    """The raw engine of one variant (key) at one batch size: median latency per batch (s),
    its 90th percentile, and images/s."""

    variant: str
    batch: int
    latency_s: float
    p90_s: float
    images_per_s: float


@dataclass(frozen=True)
class PreprocessPoint:
    """Preprocessing one photo of ``size`` (w, h) px, ``jpeg_kb`` average; per-image seconds."""

    size: tuple[int, int]
    jpeg_kb: float
    median_s: float
    p90_s: float


@dataclass(frozen=True)
class PipelinePoint:
    """In-process pipeline for one variant (key).

    ``seq_*``: sequential preprocess + batch-1 run per image (latency, s);
    ``pooled_*``: thread-pool preprocessing overlapping eager batches (images/s, mean batch),
    the best of two in-flight windows (``pooled_window`` images: one per pool thread, or two
    full batches); ``ceiling_images_per_s`` is the best of all variants.
    """

    variant: str
    seq_median_s: float
    seq_p99_s: float
    seq_images_per_s: float
    pooled_images_per_s: float
    pooled_mean_batch: float
    pooled_window: int
    pooled_rounds: list[float]
    """best pooled images/s of each measurement round (interleaved with the load rounds)"""

    @property
    def ceiling_images_per_s(self) -> float:
        """The in-process throughput ceiling, images/s: the better of the sequential loop and
        the median over rounds of the best pooled variant."""
        return max(self.seq_images_per_s, median(self.pooled_rounds))


class Model:
    """One variant's engine, opened exactly as the server opens it (one instance).

    Raises what ``open_engine`` raises (``EngineUnavailable`` where it cannot run here).
    """

    def __init__(self, variant: Variant, model_dir: Path, threads: int) -> None:
        self.variant = variant
        self.path = variant.path(model_dir)
        options = EngineOptions(variant.provider, variant.engine_precision, threads)
        self.engine = open_engine(self.path, options, read_cpuinfo())
        self.meta: ModelMetadata = self.engine.meta
        self.report: EngineReport = self.engine.report

    def run(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``[N, 224, 224, 3]`` -> float32 logits ``[N, 1000]``."""
        return self.engine.run(0, images)


def crops(model: Model, photos: list[Photo]) -> np.ndarray:
    """The preprocessed crops of ``photos``: uint8 ``[len(photos), H, W, 3]``."""
    spec = model.meta.preprocessing
    return np.stack([preprocess(p.jpeg, spec) for p in photos])


def raw_engine(
    models: list[Model],
    base: np.ndarray,
    batches: tuple[int, ...],
    seconds: float,
    rounds: int = 2,
    progress: Callable[[], object] = lambda: None,
) -> list[EnginePoint]:
    """Time ``model.run`` of every model on batches of real crops (``base`` tiled to each
    batch size), ``seconds`` per (model, batch size) in all.

    Interleaved: ``rounds`` passes, each over every model and every batch size, so a change
    in machine load hits every variant and size alike. ``progress`` is called once per
    (model, batch size) per pass.
    """
    inputs = {b: np.ascontiguousarray(np.resize(base, (b, *base.shape[1:]))) for b in batches}
    times: dict[tuple[str, int], list[float]] = {}
    for model in models:
        for images in inputs.values():
            model.run(images)  # the first run at a new shape allocates
    for _ in range(rounds):
        for model in models:
            for b, images in inputs.items():
                ts = time_calls(partial(model.run, images), seconds / rounds, min_calls=2)
                times.setdefault((model.variant.key, b), []).extend(ts)
                progress()
    out = []
    for (key, b), ts in times.items():
        lat = median(ts)
        out.append(EnginePoint(key, b, lat, percentile(ts, 90), b / lat))
    return out


def preprocessing(model: Model, photos: list[Photo], seconds: float) -> PreprocessPoint:
    """Median single-thread decode + resize + crop time, cycling through ``photos``."""
    spec = model.meta.preprocessing
    limits = DecodeLimits()
    i = 0

    def one() -> None:
        nonlocal i
        preprocess(photos[i % len(photos)].jpeg, spec, limits)
        i += 1

    one()
    times = time_calls(one, seconds, min_calls=2 * len(photos))
    kb = sum(len(p.jpeg) for p in photos) / len(photos) / 1024
    return PreprocessPoint(photos[0].size, kb, median(times), percentile(times, 90))


@dataclass(frozen=True)
class Ceiling:
    """What decode + the engine alone would serve on all ``cores``, images/s.

    ``decode_s``: one core's CPU seconds to preprocess one load photo (thread CPU time, the
    median: immune to sharing the core); ``engine_images_per_s``: the raw engine at its best
    batch (``engine_batch``) on all cores. Each image costs ``decode_s`` + ``cores /
    engine_images_per_s`` core-seconds, so ``cores`` serve ``images_per_s`` of them.
    """

    variant: str
    cores: int
    decode_s: float
    engine_images_per_s: float
    engine_batch: int

    @property
    def engine_core_s(self) -> float:
        """Core-seconds of engine per image at its best batch."""
        return self.cores / self.engine_images_per_s

    @property
    def images_per_s(self) -> float:
        return self.cores / (self.decode_s + self.engine_core_s)


def decode_cpu_s(model: Model, photo: Photo, seconds: float) -> float:
    """Median thread-CPU seconds of one ``preprocess`` of ``photo`` (this thread only)."""
    spec = model.meta.preprocessing
    preprocess(photo.jpeg, spec)
    times: list[float] = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop or len(times) < 5:
        t = time.thread_time()
        preprocess(photo.jpeg, spec)
        times.append(time.thread_time() - t)
    return median(times)


def ceiling(variant: str, cores: int, decode_s: float, raw: list[EnginePoint]) -> Ceiling | None:
    """The :class:`Ceiling` of ``variant`` from its raw engine points (None without any)."""
    mine = [p for p in raw if p.variant == variant]
    if not mine:
        return None
    best = max(mine, key=lambda p: p.images_per_s)
    return Ceiling(variant, cores, decode_s, best.images_per_s, best.batch)


def sequential(model: Model, photos: list[Photo], seconds: float) -> list[float]:
    """One image at a time, preprocess then a batch-1 run. Returns per-image seconds."""
    spec = model.meta.preprocessing
    i = 0

    def one() -> None:
        nonlocal i
        model.run(preprocess(photos[i % len(photos)].jpeg, spec)[np.newaxis])
        i += 1

    one()
    return time_calls(one, seconds, min_calls=5)


def pooled(
    model: Model, photos: list[Photo], seconds: float, threads: int, max_batch: int, window: int
) -> tuple[float, float]:
    """Preprocess in a ``threads`` pool while this thread runs eager batches of what is ready.

    The same shape as the server (a preprocessing pool, one inference thread that takes
    whatever is waiting up to ``max_batch``), minus HTTP and asyncio. ``window`` images are
    kept in flight (submitted, not yet inferred): like the server's concurrency, it decides
    how far preprocessing runs ahead of, and competes for the cores with, inference.

    Returns:
        (images per second, mean batch size).
    """
    spec = model.meta.preprocessing
    ready: queue.Queue[np.ndarray] = queue.Queue()
    submitted = 0

    def done(f: Future[np.ndarray]) -> None:
        if not f.cancelled():  # the ones cancelled at the end are not waited for
            ready.put(f.result())

    with ThreadPoolExecutor(threads, thread_name_prefix="bench-pre") as pool:

        def submit() -> None:
            nonlocal submitted
            fut = pool.submit(preprocess, photos[submitted % len(photos)].jpeg, spec)
            fut.add_done_callback(done)
            submitted += 1

        for _ in range(window):
            submit()
        images = runs = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            rows = [ready.get()]
            while len(rows) < max_batch:
                try:
                    rows.append(ready.get_nowait())
                except queue.Empty:
                    break
            for _ in rows:
                submit()
            model.run(np.stack(rows))
            images += len(rows)
            runs += 1
        elapsed = time.perf_counter() - start
        pool.shutdown(wait=True, cancel_futures=True)
    return images / elapsed, images / max(runs, 1)


def best_pooled(
    model: Model, photos: list[Photo], seconds: float, threads: int, max_batch: int
) -> tuple[float, float, int]:
    """The best of the pooled pipeline over in-flight windows of one image per pool thread,
    half a batch and two full batches (``seconds`` in all).

    Returns:
        (images per second, mean batch, window).
    """
    windows = sorted({threads, max(threads, max_batch // 2), 2 * max_batch})
    best = (0.0, 0.0, 0)
    for window in windows:
        rate, batch = pooled(model, photos, seconds / len(windows), threads, max_batch, window)
        if rate > best[0]:
            best = (rate, batch, window)
    return best


def pipeline(
    model: Model, photos: list[Photo], seconds: float, threads: int, max_batch: int
) -> PipelinePoint:
    """The sequential loop (``seconds / 4``) and the best pooled variant for one model."""
    seq = sequential(model, photos, seconds / 4)
    rate, batch, window = best_pooled(model, photos, 3 * seconds / 4, threads, max_batch)
    return PipelinePoint(
        model.variant.key,
        median(seq),
        percentile(seq, 99),
        len(seq) / sum(seq),
        rate,
        batch,
        window,
        [rate],
    )
