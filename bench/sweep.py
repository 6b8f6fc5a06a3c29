"""One measured load phase against a running server: the load generator's numbers plus the
server's side (CPU, RSS, and for our server the metric deltas: mean batch, time breakdown)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine

from . import metrics
from .config import BenchConfig
from .gpu import GpuSampler
from .load import PhaseResult, closed_loop, open_loop
from .targets import DELAY, SERVER, Running

#: Per-phase breakdowns of our server, keyed by (model, target, kind, level, repeat).
Breakdowns = dict[tuple[str, str, str, float, int], metrics.Breakdown]


def _run(coro: Coroutine[None, None, PhaseResult]) -> PhaseResult:
    """Run on uvloop when installed (uvicorn[standard] brings it): less client CPU."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


def measure(
    run: Running,
    cfg: BenchConfig,
    kind: str,
    level: float,
    *,
    repeat: int = 0,
    breakdowns: Breakdowns | None = None,
    seed: int = 0,
) -> PhaseResult:
    """Run one closed-loop (``level`` = concurrency) or open-loop (``level`` = requests/s)
    phase and annotate it with the server's CPU (cores), RSS (MiB) and, for our server,
    the mean batch size and the per-request time breakdown from its own metrics."""
    ours = run.target.name in (SERVER, DELAY)
    model = run.target.model
    before = metrics.scrape(run.proc.url, model) if ours else {}
    sampler = GpuSampler() if cfg.gpu and GpuSampler.available() else None
    if sampler:
        sampler.start()
    cpu0, t0 = run.proc.cpu_seconds(), time.perf_counter()
    if kind == "closed":
        coro = closed_loop(run.target, int(level), cfg.phase_seconds, cfg.warmup_seconds)
    else:
        coro = open_loop(run.target, level, cfg.phase_seconds, cfg.warmup_seconds, seed=seed)
    result = _run(coro)
    wall = time.perf_counter() - t0
    result.extra["server_cpu"] = (run.proc.cpu_seconds() - cpu0) / wall
    result.extra["rss_mib"] = run.proc.rss_bytes() / 2**20
    result.extra["repeat"] = repeat
    if sampler and (g := sampler.stop()) is not None:
        result.extra["gpu_util_pct"] = g.util_pct
        result.extra["gpu_mem_mib"] = g.mem_mib
    if ours:
        bd = metrics.breakdown(before, metrics.scrape(run.proc.url, model))
        result.extra["mean_batch"] = bd.mean_batch
        if breakdowns is not None:
            breakdowns[(model, run.target.name, kind, level, repeat)] = bd
    return result
