"""Aggregation of a :class:`bench.run.Results`: medians over the interleaved repeats, peaks,
saturation points and the headline ratios. Times are seconds, rates per second."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from .limits import MACS_PER_IMAGE
from .load import PhaseResult
from .run import Results
from .targets import SERVER


@dataclass(frozen=True)
class Row:
    """Medians over repeats of one (target, level) point; counts are summed."""

    target: str
    level: float
    throughput: float
    p50: float
    p90: float
    p99: float
    max: float
    errors: int
    rejected: int
    mean_batch: float
    server_cpu: float
    client_cpu: float
    rss_mib: float
    mean_latency: float
    gpu_util: float = float("nan")
    """mean GPU utilisation, % (``--gpu`` only)"""
    gpu_mem: float = float("nan")
    """peak GPU memory used, MiB (``--gpu`` only)"""


def _med(values: list[float]) -> float:
    vals = [v for v in values if v == v]  # drop NaN
    return statistics.median(vals) if vals else float("nan")


def rows(phases: list[PhaseResult], model: str, target: str) -> list[Row]:
    """One row per level (sorted) for ``model``/``target``."""
    mine = [p for p in phases if p.model == model and p.target == target]
    out = []
    for level in sorted({p.level for p in mine}):
        ps = [p for p in mine if p.level == level]

        def m(fn: Callable[[PhaseResult], float], ps: list[PhaseResult] = ps) -> float:
            return _med([fn(p) for p in ps])

        out.append(Row(
            target, level, m(lambda p: p.throughput), m(lambda p: p.pct(50)),
            m(lambda p: p.pct(90)), m(lambda p: p.pct(99)),
            max((max(p.latencies) for p in ps if p.latencies), default=float("nan")),
            sum(p.errors for p in ps), sum(p.rejected for p in ps),
            m(lambda p: p.extra.get("mean_batch", float("nan"))),
            m(lambda p: p.extra["server_cpu"]), m(lambda p: p.client_cpu),
            max(p.extra["rss_mib"] for p in ps),
            m(lambda p: statistics.fmean(p.latencies) if p.latencies else float("nan")),
            m(lambda p: p.extra.get("gpu_util_pct", float("nan"))),
            m(lambda p: p.extra.get("gpu_mem_mib", float("nan"))),
        ))  # fmt: skip
    return out


def targets(res: Results, model: str) -> list[str]:
    """Targets measured in the closed loop for ``model``, ours first."""
    seen = {p.target for p in res.closed if p.model == model}
    return [SERVER, *sorted(seen - {SERVER})]


def peak(res: Results, model: str, target: str) -> Row | None:
    """The closed-loop row with the highest median throughput."""
    rs = rows(res.closed, model, target)
    return max(rs, key=lambda r: r.throughput) if rs else None


def saturation(res: Results, model: str) -> Row | None:
    """Our lowest concurrency reaching 95% of our peak throughput."""
    rs = rows(res.closed, model, SERVER)
    top = peak(res, model, SERVER)
    if top is None:
        return None
    return next(r for r in rs if r.throughput >= 0.95 * top.throughput)


@dataclass(frozen=True)
class Headline:
    """The ratios the project is judged by, for one model."""

    model: str
    server_peak: float
    ceiling: float
    ratio_ceiling: float
    peers: dict[str, float]
    """server peak / peer peak throughput, per peer"""
    peer_peaks: dict[str, float]
    p50_c1: float
    direct: float
    p50_budget: float
    sat_level: float
    p99_sat: float
    flop_util: float
    """fraction of the estimated peak FLOP/s used at the server's peak throughput"""
    raw_best: float
    """raw ORT images/s at its best batch size: inference only, a hard bound"""
    noise: float
    """spread of the repeated in-process pooled measurement, (max - min) / median"""

    @property
    def ratio_raw(self) -> float:
        return self.server_peak / self.raw_best


def headline(res: Results, model: str) -> Headline:
    ours = peak(res, model, SERVER)
    sat = saturation(res, model)
    assert ours is not None and sat is not None
    c1 = next((r for r in rows(res.closed, model, SERVER) if r.level == 1), None)
    pipe = res.pipe[model]
    peer_peaks = {}
    for t in targets(res, model)[1:]:
        if (p := peak(res, model, t)) is not None:
            peer_peaks[t] = p.throughput
    flops = ours.throughput * 2 * MACS_PER_IMAGE.get(model, float("nan"))
    # Interleaved pairs when measured (same moment for both), else the two separate phases.
    paired = getattr(res, "paired", {}).get(model)  # absent in pickles of older runs
    if paired is not None:
        p50_c1, direct = paired.server_p50_s, paired.direct_p50_s
    else:
        p50_c1, direct = (c1.p50 if c1 else float("nan")), pipe.seq_median_s
    return Headline(
        model, ours.throughput, pipe.ceiling_images_per_s,
        ours.throughput / pipe.ceiling_images_per_s,
        {t: ours.throughput / v for t, v in peer_peaks.items() if v > 0}, peer_peaks,
        p50_c1, direct, 1.1 * direct + 0.002,
        sat.level, sat.p99, flops / (res.cpu.peak_gflops * 1e9),
        max((p.images_per_s for p in res.ort if p.model == model), default=float("nan")),
        noise(res, model),
    )  # fmt: skip


def noise(res: Results, model: str) -> float:
    """(max - min) / median of the in-process pooled rate over its repeated rounds: how much
    the same measurement moved during this run (other work on the shared cores)."""
    r = res.pipe[model].pooled_rounds
    return (max(r) - min(r)) / statistics.median(r) if len(r) > 1 else 0.0
