"""PNG plots (matplotlib, Agg backend): throughput vs concurrency, latency vs offered load,
where a request's time goes, and raw ORT cost per image vs batch size."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from . import summary
from .run import Results
from .targets import SERVER

COLORS = {"server": "tab:blue", "naive": "tab:orange", "litserve": "tab:green",
          "server-delay": "tab:purple"}  # fmt: skip
PARTS = ("client + socket + accept", "HTTP + framework", "queue wait", "preprocess", "inference")
PART_COLORS = ("tab:gray", "tab:olive", "tab:red", "tab:orange", "tab:blue")


def _axes(n: int) -> tuple[Figure, list[Axes]]:
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.2), squeeze=False)
    return fig, list(axes[0])


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def throughput(res: Results, path: Path) -> None:
    """Closed-loop requests/s vs concurrency per target, with the in-process ceiling."""
    fig, axes = _axes(len(res.cfg.models))
    for ax, model in zip(axes, res.cfg.models, strict=True):
        for t in summary.targets(res, model):
            rs = summary.rows(res.closed, model, t)
            ax.plot([r.level for r in rs], [r.throughput for r in rs], "o-", label=t,
                    color=COLORS.get(t))  # fmt: skip
        ax.axhline(res.pipe[model].ceiling_images_per_s, ls="--", color="k",
                   label="in-process pipeline (ceiling)")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(res.cfg.concurrency), [str(c) for c in res.cfg.concurrency])
        ax.set(title=model, xlabel="concurrent clients (closed loop)", ylabel="requests/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def latency(res: Results, path: Path) -> None:
    """Open-loop p50/p90/p99 vs offered load for our server."""
    fig, axes = _axes(len(res.cfg.models))
    for ax, model in zip(axes, res.cfg.models, strict=True):
        rs = summary.rows(res.open, model, SERVER)
        x = [r.level for r in rs]
        for q, style in (("p50", "o-"), ("p90", "s-"), ("p99", "^-")):
            ax.plot(x, [getattr(r, q) * 1000 for r in rs], style, label=q)
        if (top := summary.peak(res, model, SERVER)) is not None:
            ax.axvline(top.throughput, ls="--", color="k", label="closed-loop peak")
        ax.set_yscale("log")
        ax.set(title=f"{model}: open loop (Poisson)", xlabel="offered load, requests/s",
               ylabel="latency, ms")  # fmt: skip
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    _save(fig, path)


def breakdown_parts(res: Results, model: str, level: float) -> list[float] | None:
    """Mean ms per request in each of :data:`PARTS` at closed-loop ``level`` (first repeat)."""
    bd = res.breakdowns.get((model, SERVER, "closed", level, 0))
    phase = next((p for p in res.closed if p.model == model and p.target == SERVER
                  and p.level == level and p.extra.get("repeat") == 0), None)  # fmt: skip
    if bd is None or phase is None or not phase.latencies:
        return None
    client = max(0.0, statistics.fmean(phase.latencies) - bd.request_s)
    return [x * 1000 for x in (client, bd.http_s, bd.queue_s, bd.preprocess_s, bd.inference_s)]


def time_breakdown(res: Results, path: Path) -> None:
    """Stacked bars: where a request's time goes at each concurrency, from server metrics."""
    fig, axes = _axes(len(res.cfg.models))
    for ax, model in zip(axes, res.cfg.models, strict=True):
        levels = [c for c in res.cfg.concurrency if breakdown_parts(res, model, c)]
        parts = [breakdown_parts(res, model, c) or [] for c in levels]
        bottom = [0.0] * len(levels)
        xs = [str(c) for c in levels]
        for i, (name, color) in enumerate(zip(PARTS, PART_COLORS, strict=True)):
            vals = [p[i] for p in parts]
            ax.bar(xs, vals, bottom=bottom, label=name, color=color)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set(title=f"{model}: mean time per request", xlabel="concurrent clients",
               ylabel="ms")  # fmt: skip
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    _save(fig, path)


def batch_cost(res: Results, path: Path) -> None:
    """Raw ORT ms per image vs batch size, per model."""
    fig, axes = _axes(1)
    ax = axes[0]
    for model in res.cfg.models:
        pts = [p for p in res.ort if p.model == model]
        ax.plot([p.batch for p in pts], [1000 / p.images_per_s for p in pts], "o-", label=model)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(res.cfg.batch_sizes), [str(b) for b in res.cfg.batch_sizes])
    ax.set(title="raw ONNX Runtime cost per image", xlabel="batch size", ylabel="ms per image")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def write_all(res: Results, out_dir: Path) -> list[Path]:
    """Write every plot into ``out_dir``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fn in (("throughput_vs_concurrency", throughput), ("latency_vs_load", latency),
                     ("time_breakdown", time_breakdown), ("batch_cost", batch_cost)):  # fmt: skip
        path = out_dir / f"{name}.png"
        fn(res, path)
        paths.append(path)
    return paths
