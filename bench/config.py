"""Benchmark configurations: ``full`` (``make bench``), ``quick`` and ``smoke`` (tests)."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and for how long. Durations are seconds."""

    mode: str
    models: tuple[str, ...] = ("resnet18", "resnet50")
    """architectures; the variants of each are chosen by :func:`bench.variants.plan`"""
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    engine_seconds: float = 1.5
    """time spent per (variant, batch size) timing the raw engine, over two interleaved passes"""
    photo_sizes: tuple[tuple[int, int], ...] = ((500, 375), (1920, 1080), (4000, 3000))
    preprocess_seconds: float = 1.5
    """time per (photo size) timing preprocessing"""
    pipeline_seconds: float = 4.0
    """time per in-process pipeline variant"""
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    """closed-loop levels of the fast variant of each model and of the peers"""
    secondary_concurrency: tuple[int, ...] = (1, 4, 16, 32)
    """closed-loop levels of the other served variants (the fp32 ones, as a rule)"""
    phase_seconds: float = 4.0
    """measured time per load phase (after warm-up)"""
    warmup_seconds: float = 0.5
    """unmeasured load before each phase"""
    repeats: int = 2
    """interleaved rounds per load phase; medians are quoted"""
    open_loop_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.3)
    """open-loop offered rates of the fast variant, as fractions of its closed-loop peak"""
    peers: tuple[str, ...] = ("naive", "litserve")
    paired_requests: int = 60
    """interleaved (direct call, HTTP request) pairs for the concurrency-1 latency headline"""
    batching_concurrency: tuple[int, ...] = (8, 16)
    batching_repeats: int = 2
    batching_delay_ms: float = 5.0
    max_batch_size: int = 32
    agreement_check: bool = True
    """False: our servers start with ``--agreement-check false``, to put under load a file
    whose agreement misses its floors (random weights); its agreement is still reported"""
    intra_op_threads: int = 0
    """0 = the server default (its core budget / instances)"""
    overload_factor: float = 3.0
    """offered load of the overload phase, times the variant's closed-loop peak"""
    overload_seconds: float = 8.0
    overload_warmup_seconds: float = 1.0
    overload_queue_timeouts_ms: tuple[float, ...] = (1000.0, 10000.0)
    """queue_timeout_ms of the server in the overload phases: one short enough for the
    deadline to bind on two cores, and the default for contrast (see the report)"""
    overload_all: bool = True
    """overload every served variant (else the fast one of each model)"""
    agreement_views: int = 7
    """views of each agreement photo (1..7; 5 photos)"""
    split_repeats: int = 2
    """interleaved rounds of the thread-split comparison"""
    splits: int = 4
    """how many of :func:`bench.splits.layouts` to measure (the default layout first)"""
    gpu: bool = False


FULL = BenchConfig(mode="full")

QUICK = BenchConfig(
    mode="quick",
    models=("resnet18",),
    batch_sizes=(1, 4, 16, 32),
    engine_seconds=0.8,
    preprocess_seconds=0.6,
    pipeline_seconds=2.0,
    concurrency=(1, 4, 16, 32),
    secondary_concurrency=(1, 4, 16, 32),
    phase_seconds=2.0,
    warmup_seconds=0.3,
    repeats=1,
    paired_requests=30,
    open_loop_fractions=(0.5, 1.0),
    batching_concurrency=(16,),
    batching_repeats=1,
    overload_seconds=4.0,
    overload_warmup_seconds=1.0,
    overload_all=False,
    split_repeats=1,
)

SMOKE = replace(
    QUICK,
    mode="smoke",
    batch_sizes=(1, 4),
    engine_seconds=0.2,
    photo_sizes=((500, 375), (1920, 1080)),
    preprocess_seconds=0.2,
    pipeline_seconds=0.5,
    concurrency=(1, 4),
    secondary_concurrency=(4,),
    phase_seconds=0.7,
    warmup_seconds=0.1,
    open_loop_fractions=(0.5,),
    paired_requests=5,
    batching_concurrency=(4,),
    peers=("naive",),
    max_batch_size=8,
    overload_seconds=1.0,
    overload_warmup_seconds=0.3,
    overload_queue_timeouts_ms=(500.0,),
    agreement_views=1,
    splits=2,
)

PRESETS = {"full": FULL, "quick": QUICK, "smoke": SMOKE}
