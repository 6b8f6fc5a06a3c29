"""Aggregation of a :class:`bench.results.Results`: medians over the interleaved repeats, peaks,
saturation points, the headline ratios and the thread accounting. Times are seconds, rates
per second; a *variant* is a key such as ``resnet18-int8@openvino``."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from . import threads
from .limits import MACS_PER_IMAGE
from .load import PhaseResult
from .results import Results
from .targets import SERVER
from .variants import Variant

NAN = float("nan")


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
    gpu_util: float = NAN
    """mean GPU utilisation, % (``--gpu`` only)"""
    gpu_mem: float = NAN
    """peak GPU memory used, MiB (``--gpu`` only)"""
    throughputs: tuple[float, ...] = ()
    """the throughput of each round, for the spread"""


def _med(values: list[float]) -> float:
    vals = [v for v in values if v == v]  # drop NaN
    return statistics.median(vals) if vals else NAN


def rows(phases: list[PhaseResult], variant: str, target: str) -> list[Row]:
    """One row per level (sorted) for ``variant``/``target``."""
    mine = [p for p in phases if p.variant == variant and p.target == target]
    out = []
    for level in sorted({p.level for p in mine}):
        ps = [p for p in mine if p.level == level]

        def m(fn: Callable[[PhaseResult], float], ps: list[PhaseResult] = ps) -> float:
            return _med([fn(p) for p in ps])

        out.append(
            Row(
                target,
                level,
                m(lambda p: p.throughput),
                m(lambda p: p.pct(50)),
                m(lambda p: p.pct(90)),
                m(lambda p: p.pct(99)),
                max((max(p.latencies) for p in ps if p.latencies), default=NAN),
                sum(p.errors for p in ps),
                sum(p.rejected for p in ps),
                m(lambda p: p.extra.get("mean_batch", NAN)),
                m(lambda p: p.extra["server_cpu"]),
                m(lambda p: p.client_cpu),
                max(p.extra["rss_mib"] for p in ps),
                m(lambda p: statistics.fmean(p.latencies) if p.latencies else NAN),
                m(lambda p: p.extra.get("gpu_util_pct", NAN)),
                m(lambda p: p.extra.get("gpu_mem_mib", NAN)),
                tuple(p.throughput for p in ps),
            )
        )
    return out


def targets(res: Results, variant: str) -> list[str]:
    """Targets measured in the closed loop for ``variant``, ours first."""
    seen = {p.target for p in res.closed if p.variant == variant}
    return [SERVER, *sorted(seen - {SERVER})] if seen else []


def peak(res: Results, variant: str, target: str = SERVER) -> Row | None:
    """The closed-loop row with the highest median throughput."""
    rs = rows(res.closed, variant, target)
    return max(rs, key=lambda r: r.throughput) if rs else None


def saturation(res: Results, variant: str, target: str = SERVER) -> Row | None:
    """The lowest concurrency reaching 95% of the peak throughput."""
    top = peak(res, variant, target)
    if top is None:
        return None
    return next(
        r for r in rows(res.closed, variant, target) if r.throughput >= 0.95 * top.throughput
    )


def raw_best(res: Results, variant: str) -> float:
    """The raw engine's images/s at its best batch size (inference only: a hard bound)."""
    return max((p.images_per_s for p in res.raw if p.variant == variant), default=NAN)


def ratio(a: float, b: float) -> float:
    return a / b if b and b == b and a == a else NAN


@dataclass(frozen=True)
class Headline:
    """The ratios the project is judged by, for one served variant."""

    variant: str
    server_peak: float
    ceiling: float
    ratio_ceiling: float
    p50_c1: float
    direct: float
    p50_budget: float
    sat_level: float
    p99_sat: float
    raw_best: float
    noise: float
    """spread of the repeated in-process pooled measurement, (max - min) / median"""
    vs_fp32_same_provider: float
    """server peak / the fp32 server's peak on the same provider (NaN for fp32 itself)"""
    vs_fp32_cpu: float
    """server peak / the fp32 ONNX Runtime CPU server's peak"""
    flop_util: float
    """fp32 only: fraction of the estimated peak FP32 FLOP/s used at the server's peak"""
    parts_ceiling: float = NAN
    """images/s decode + the engine alone would serve on all cores (bench.limits.Ceiling)"""

    @property
    def ratio_parts(self) -> float:
        return ratio(self.server_peak, self.parts_ceiling)

    @property
    def ratio_raw(self) -> float:
        return ratio(self.server_peak, self.raw_best)


def server_peak(res: Results, variant: Variant) -> float:
    top = peak(res, variant.key)
    return top.throughput if top else NAN


def headline(res: Results, key: str) -> Headline:
    v = Variant.parse(key)
    ours, sat = peak(res, key), saturation(res, key)
    top = ours.throughput if ours else NAN
    pipe = res.pipe.get(key)
    ceiling = pipe.ceiling_images_per_s if pipe else NAN
    paired = res.paired.get(key)
    p50_c1, direct = (paired.server_p50_s, paired.direct_p50_s) if paired else (NAN, NAN)
    same = Variant(v.arch, v.provider)
    fp32 = v.precision == "fp32"
    flops = top * 2 * MACS_PER_IMAGE.get(v.arch, NAN) / (res.cpu.peak_gflops * 1e9)
    return Headline(
        key,
        top,
        ceiling,
        ratio(top, ceiling),
        p50_c1,
        direct,
        1.1 * direct + 0.002,
        sat.level if sat else NAN,
        sat.p99 if sat else NAN,
        raw_best(res, key),
        noise(res, key),
        NAN if same in (v, v.reference) else ratio(top, server_peak(res, same)),
        NAN if v == v.reference else ratio(top, server_peak(res, v.reference)),
        flops if fp32 else NAN,
        res.ceiling[key].images_per_s if key in res.ceiling else NAN,
    )


def noise(res: Results, variant: str) -> float:
    """(max - min) / median of the in-process pooled rate over its repeated rounds: how much
    the same measurement moved during this run (other work on the shared cores)."""
    pipe = res.pipe.get(variant)
    r = pipe.pooled_rounds if pipe else []
    return (max(r) - min(r)) / statistics.median(r) if len(r) > 1 else 0.0


def spread(values: tuple[float, ...] | list[float]) -> float:
    """(max - min) / median of ``values`` (0 for fewer than two)."""
    vals = [v for v in values if v == v]
    if len(vals) < 2 or not statistics.median(vals):
        return 0.0
    return (max(vals) - min(vals)) / statistics.median(vals)


@dataclass(frozen=True)
class PeerVerdict:
    """Our server against one peer on the same variant: peak ratio, and the p99 of both at
    the concurrency where the peer peaks."""

    peer: str
    ours_peak: float
    peer_peak: float
    level: float
    ours_p99: float
    peer_p99: float

    @property
    def ratio(self) -> float:
        return ratio(self.ours_peak, self.peer_peak)


def peers(res: Results, key: str) -> list[PeerVerdict]:
    out = []
    ours = peak(res, key)
    mine = {r.level: r for r in rows(res.closed, key, SERVER)}
    for t in targets(res, key)[1:]:
        theirs = peak(res, key, t)
        if ours is None or theirs is None:
            continue
        at = mine.get(theirs.level)
        out.append(
            PeerVerdict(
                t,
                ours.throughput,
                theirs.throughput,
                theirs.level,
                at.p99 if at else NAN,
                theirs.p99,
            )
        )
    return out


@dataclass(frozen=True)
class Threads:
    """Thread accounting of one closed-loop point (medians over rounds): CPU cores used by
    each group, the event loop's run-queue wait, and responses per second in the span."""

    target: str
    level: float
    cores: dict[str, float]
    """CPU seconds per wall second, per group"""
    loop_wait: float
    """fraction of the span the event loop was runnable but had no core"""
    waiting: float
    """cores' worth of the process's threads runnable but without a core (all threads)"""
    rate: float
    """responses per second over the span"""

    @property
    def total(self) -> float:
        return sum(self.cores.values())

    @property
    def loop(self) -> float:
        return self.cores.get(threads.LOOP, 0.0)

    @property
    def loop_ms_per_request(self) -> float:
        return 1000 * self.loop / self.rate if self.rate else NAN

    @property
    def loop_limit(self) -> float:
        """Requests/s at which the event loop alone would fill one core."""
        return 1000 / self.loop_ms_per_request if self.loop_ms_per_request else NAN


def thread_usage(
    phases: list[PhaseResult], variant: str, target: str, level: float
) -> Threads | None:
    ps = [
        p
        for p in phases
        if p.variant == variant
        and p.target == target
        and p.level == level
        and p.extra.get("span_s")
    ]
    if not ps:
        return None
    cores = {
        g: _med([p.extra.get(f"cpu:{g}", 0.0) / p.extra["span_s"] for p in ps])
        for g in threads.GROUPS
    }
    wait = _med([p.extra.get("loop_wait_s", NAN) / p.extra["span_s"] for p in ps])
    waiting = _med([p.extra.get("wait_s", NAN) / p.extra["span_s"] for p in ps])
    rate = _med([p.span_responses / p.extra["span_s"] for p in ps])
    return Threads(target, level, {g: c for g, c in cores.items() if c > 0}, wait, waiting, rate)
