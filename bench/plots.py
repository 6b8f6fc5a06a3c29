"""PNG plots (matplotlib, Agg backend): throughput vs concurrency, latency vs offered load,
where a request's time goes, and the raw engine's cost per image vs batch size. One panel
per architecture, one line per variant (provider x precision)."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from . import summary
from .results import Results
from .targets import SERVER
from .variants import Variant

COLORS = {
    "fp32@cpu": "tab:blue",
    "fp32@openvino": "tab:cyan",
    "int8@cpu": "tab:brown",
    "int8@openvino": "tab:red",
    "bf16@openvino": "tab:purple",
    "fp32@cuda": "tab:blue",
}
PEER_STYLE = {"naive": ":", "litserve": "-."}
PARTS = ("client + socket + accept", "HTTP + framework", "queue wait", "preprocess", "inference")
PART_COLORS = ("tab:gray", "tab:olive", "tab:red", "tab:orange", "tab:blue")


def _axes(n: int) -> tuple[Figure, list[Axes]]:
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.2), squeeze=False)
    return fig, list(axes[0])


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _color(key: str) -> str | None:
    v = Variant.parse(key)
    return COLORS.get(f"{v.precision}@{v.provider}")


def _archs(res: Results) -> list[str]:
    return [a for a in res.cfg.models if any(v.arch == a for v in res.plan.served)] or list(
        res.cfg.models
    )


def throughput(res: Results, path: Path) -> None:
    """Closed-loop requests/s vs concurrency per variant and peer, with the in-process
    ceilings (dashed, same colour)."""
    archs = _archs(res)
    fig, axes = _axes(len(archs))
    levels = sorted({p.level for p in res.closed})
    for ax, arch in zip(axes, archs, strict=True):
        for v in res.plan.served_of(arch):
            for t in summary.targets(res, v.key):
                rs = summary.rows(res.closed, v.key, t)
                name = v.label.removeprefix(arch + " ")
                ax.plot(
                    [r.level for r in rs],
                    [r.throughput for r in rs],
                    "o" + PEER_STYLE.get(t, "-"),
                    color=_color(v.key),
                    label=name if t == SERVER else f"{t} ({name})",
                )
            if (pipe := res.pipe.get(v.key)) is not None and summary.targets(res, v.key):
                ax.axhline(pipe.ceiling_images_per_s, ls="--", color=_color(v.key), lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [f"{c:g}" for c in levels])
        ax.set(
            title=f"{arch} (dashed: in-process ceiling)",
            xlabel="concurrent clients (closed loop)",
            ylabel="requests/s",
        )
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def latency(res: Results, path: Path) -> None:
    """Open-loop p50/p90/p99 vs offered load for the fast variant of each model."""
    keys = list(res.fast.values()) or [v.key for v in res.plan.served[:1]]
    fig, axes = _axes(len(keys))
    for ax, key in zip(axes, keys, strict=True):
        rs = summary.rows(res.open, key, SERVER)
        x = [r.level for r in rs]
        for q, style in (("p50", "o-"), ("p90", "s-"), ("p99", "^-")):
            ax.plot(x, [getattr(r, q) * 1000 for r in rs], style, label=q)
        if (top := summary.peak(res, key, SERVER)) is not None:
            ax.axvline(top.throughput, ls="--", color="k", label="closed-loop peak")
        ax.set_yscale("log")
        ax.set(
            title=f"{Variant.parse(key).label}: open loop (Poisson)",
            xlabel="offered load, requests/s",
            ylabel="latency, ms",
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    _save(fig, path)


def breakdown_parts(res: Results, key: str, level: float) -> list[float] | None:
    """Mean ms per request in each of :data:`PARTS` at closed-loop ``level`` (first repeat)."""
    bd = res.breakdowns.get((key, SERVER, "closed", level, 0))
    phase = next(
        (
            p
            for p in res.closed
            if p.variant == key
            and p.target == SERVER
            and p.level == level
            and p.extra.get("repeat") == 0
        ),
        None,
    )
    if bd is None or phase is None or not phase.latencies:
        return None
    client = max(0.0, statistics.fmean(phase.latencies) - bd.request_s)
    return [x * 1000 for x in (client, bd.http_s, bd.queue_s, bd.preprocess_s, bd.inference_s)]


def time_breakdown(res: Results, path: Path) -> None:
    """Stacked bars: where a request's time goes at each concurrency (fast variants), from
    the server's metrics."""
    keys = list(res.fast.values()) or [v.key for v in res.plan.served[:1]]
    fig, axes = _axes(len(keys))
    for ax, key in zip(axes, keys, strict=True):
        levels = [c for c in res.cfg.concurrency if breakdown_parts(res, key, c)]
        parts = [breakdown_parts(res, key, c) or [] for c in levels]
        bottom = [0.0] * len(levels)
        xs = [str(c) for c in levels]
        for i, (name, color) in enumerate(zip(PARTS, PART_COLORS, strict=True)):
            vals = [p[i] for p in parts]
            ax.bar(xs, vals, bottom=bottom, label=name, color=color)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set(
            title=f"{Variant.parse(key).label}: mean time per request",
            xlabel="concurrent clients",
            ylabel="ms",
        )
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    _save(fig, path)


def batch_cost(res: Results, path: Path) -> None:
    """The raw engine's ms per image vs batch size, per variant."""
    archs = _archs(res)
    fig, axes = _axes(len(archs))
    for ax, arch in zip(axes, archs, strict=True):
        for key in dict.fromkeys(p.variant for p in res.raw):
            if Variant.parse(key).arch != arch:
                continue
            pts = [p for p in res.raw if p.variant == key]
            ax.plot(
                [p.batch for p in pts],
                [1000 / p.images_per_s for p in pts],
                "o-",
                label=Variant.parse(key).label,
                color=_color(key),
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(res.cfg.batch_sizes), [str(b) for b in res.cfg.batch_sizes])
        ax.set(
            title=f"{arch}: raw engine cost per image", xlabel="batch size", ylabel="ms per image"
        )
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def write_all(res: Results, out_dir: Path) -> list[Path]:
    """Write every plot into ``out_dir``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fn in (
        ("throughput_vs_concurrency", throughput),
        ("latency_vs_load", latency),
        ("time_breakdown", time_breakdown),
        ("batch_cost", batch_cost),
    ):
        path = out_dir / f"{name}.png"
        fn(res, path)
        paths.append(path)
    return paths
