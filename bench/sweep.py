"""One measured load phase against a running server: the load generator's numbers plus the
server's side (CPU, RSS, CPU per thread group, and for our server the metric deltas: mean
batch, time breakdown, refusals by reason)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine

from . import machine, metrics, procs, threads
from .config import BenchConfig
from .gpu import GpuSampler
from .load import PhaseResult, closed_loop, open_loop
from .targets import Running, ours

#: Per-phase breakdowns of our server, keyed by (variant, target, kind, level, repeat).
Breakdowns = dict[tuple[str, str, str, float, int], metrics.Breakdown]


def _run(coro: Coroutine[None, None, PhaseResult]) -> PhaseResult:
    """Run on uvloop when installed (uvicorn[standard] brings it): less client CPU."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


class ThreadSpan:
    """Per-thread CPU of a server process between the load generator's window marks."""

    def __init__(self, run: Running) -> None:
        self.pid = run.proc.proc.pid
        self.run = run
        self.before: dict[int, threads.ThreadTimes] = {}
        self.after: dict[int, threads.ThreadTimes] = {}
        self.t0 = self.wall = 0.0

    def __call__(self, mark: str) -> None:
        if mark == "start":
            self.t0, self.before = time.perf_counter(), threads.sample(self.pid)
        else:
            self.wall, self.after = time.perf_counter() - self.t0, threads.sample(self.pid)

    def usage(self) -> threads.Usage:
        py = threads.python_threads(self.run.thread_log)
        return threads.usage(
            self.pid, self.before, self.after, self.wall, [self.run.variant.model], py
        )


def measure(
    run: Running,
    cfg: BenchConfig,
    kind: str,
    level: float,
    *,
    repeat: int = 0,
    breakdowns: Breakdowns | None = None,
    seed: int = 0,
    seconds: float | None = None,
    warmup: float | None = None,
) -> PhaseResult:
    """Run one closed-loop (``level`` = concurrency) or open-loop (``level`` = requests/s)
    phase and annotate it with the server's CPU (cores), RSS (MiB), the CPU of its thread
    groups over the measured span (``extra["cpu:<group>"]``, seconds, with ``span_s`` and
    ``loop_wait_s``, ``wait_s``: run-queue waits) and, for our server, the mean batch size, the per-request time breakdown
    and the metric deltas (``extra["srv:<series>"]``)."""
    mine = ours(run.target.name)
    variant = run.target.variant
    seconds = cfg.phase_seconds if seconds is None else seconds
    warmup = cfg.warmup_seconds if warmup is None else warmup
    before = metrics.scrape(run.proc.url, run.target.model) if mine else {}
    sampler = GpuSampler() if cfg.gpu and GpuSampler.available() else None
    if sampler:
        sampler.start()
    span = ThreadSpan(run) if run.thread_log is not None else None
    if kind == "closed":
        coro = closed_loop(run.target, int(level), seconds, warmup, hook=span)
    else:
        coro = open_loop(run.target, level, seconds, warmup, seed=seed, hook=span)
    with procs.isolate(run.proc) as paused:
        cpu0, t0 = run.proc.cpu_seconds(), time.perf_counter()
        snap0 = machine.snapshot()
        result = _run(coro)
        wall = time.perf_counter() - t0
        use = machine.usage(snap0, machine.snapshot(), run.proc.proc.pid, run.proc.escaped())
    note_machine(result, use, len(paused))
    result.extra["server_cpu"] = (run.proc.cpu_seconds() - cpu0) / wall
    result.extra["rss_mib"] = run.proc.rss_bytes() / 2**20
    result.extra["repeat"] = repeat
    if span is not None and span.wall > 0:
        groups = span.usage()
        result.extra.update({f"cpu:{g}": s for g, s in groups.cpu_s.items()})
        result.extra["span_s"] = groups.wall_s
        result.extra["loop_wait_s"] = groups.loop_wait_s
        result.extra["wait_s"] = groups.wait_s
    if sampler and (g := sampler.stop()) is not None:
        result.extra["gpu_util_pct"] = g.util_pct
        result.extra["gpu_mem_mib"] = g.mem_mib
    if mine:
        after = metrics.scrape(run.proc.url, run.target.model)
        bd = metrics.breakdown(before, after)
        result.extra["mean_batch"] = bd.mean_batch
        for key, value in metrics.delta(before, after).items():
            if "{" in key and value:
                result.extra[f"srv:{key}"] = value
        if breakdowns is not None:
            breakdowns[(variant, run.target.name, kind, level, repeat)] = bd
    return result


def note_machine(result: PhaseResult, use: machine.Usage, paused: int) -> None:
    """Record on ``result`` what the rest of the machine used during it, and mark it when
    that is more than bench.machine.OTHERS_LIMIT_CORES."""
    result.others_cores = use.others_total
    top = {k: v for k, v in use.others.items() if v >= 0.005}  # every one of note, largest first
    if use.unattributed > 0.005:
        top["unattributed"] = use.unattributed
    result.others_top = top
    result.paused = paused
    result.marked = use.marked()
