"""The whole benchmark, in order: limits, then per model the load sweeps (ours interleaved with
the peers), the open-loop sweep and the batching comparison. Returns a :class:`Results`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from . import limits
from .config import BenchConfig
from .hw import CpuInfo, cpu_info, load_average
from .images import photos
from .load import PhaseResult
from .paired import Paired, paired_latency
from .sweep import Breakdowns, measure
from .targets import (
    DELAY,
    LITSERVE,
    NAIVE,
    SERVER,
    Running,
    batching_policy,
    litserve_available,
    start,
)

log = logging.getLogger("bench")

LOAD_PHOTO = (500, 375)
"""Photo size uploaded in every load test, pixels (w, h)"""


@dataclass
class Results:
    """Everything one run measured (seconds, images/s, requests/s unless named otherwise)."""

    cfg: BenchConfig
    command: str
    started: str
    cpu: CpuInfo
    threads: int
    pool_threads: int
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    duration_s: float = 0.0
    providers: dict[str, list[str]] = field(default_factory=dict)
    ort: list[limits.OrtPoint] = field(default_factory=list)
    prep: list[limits.PreprocessPoint] = field(default_factory=list)
    pipe: dict[str, limits.PipelinePoint] = field(default_factory=dict)
    paired: dict[str, Paired] = field(default_factory=dict)
    closed: list[PhaseResult] = field(default_factory=list)
    open: list[PhaseResult] = field(default_factory=list)
    batching: list[PhaseResult] = field(default_factory=list)
    breakdowns: Breakdowns = field(default_factory=dict)
    policy: dict[str, dict[str, object]] = field(default_factory=dict)
    peer_notes: dict[str, str] = field(default_factory=dict)
    load_jpeg_kb: float = 0.0


def run_limits(res: Results, model_dir: Path) -> dict[str, limits.Model]:
    """Step 1: raw ORT per batch size, preprocessing per photo size, the in-process pipeline.

    Returns the loaded models, kept for the in-process rounds interleaved with the load.
    """
    from server.settings import Settings

    cfg = res.cfg
    settings = Settings.model_validate({
        "model_dir": model_dir, "intra_op_threads": cfg.intra_op_threads,
        "provider": "cuda" if cfg.gpu else "cpu",
    })  # fmt: skip
    load_photos = photos(LOAD_PHOTO)
    res.load_jpeg_kb = len(load_photos[0].jpeg) / 1024
    steps = len(cfg.models) * 2 + len(cfg.photo_sizes)
    models = {}
    with tqdm(total=steps, desc="limits", unit="step") as bar:
        for name in cfg.models:
            model = limits.Model(model_dir / f"{name}.onnx", settings)
            res.providers[name] = model.providers
            base = limits.crops(model, load_photos)
            secs = cfg.ort_seconds * len(cfg.batch_sizes)
            res.ort += limits.raw_ort(model, name, base, cfg.batch_sizes, secs)
            bar.update()
            if name == cfg.models[0]:
                for size in cfg.photo_sizes:
                    res.prep.append(
                        limits.preprocessing(model, photos(size), cfg.preprocess_seconds)
                    )
                    bar.update()
            res.pipe[name] = limits.pipeline(
                model, name, [load_photos[1]], cfg.pipeline_seconds, res.pool_threads,
                cfg.max_batch_size,
            )  # fmt: skip
            bar.update()
            models[name] = model
    return models


def _start_all(kinds: list[str], res: Results, model_dir: Path, model: str, jpeg: bytes,
               log_dir: Path) -> dict[str, Running]:  # fmt: skip
    running: dict[str, Running] = {}
    for kind in kinds:
        try:
            running[kind] = start(kind, res.cfg, model_dir, model, jpeg, log_dir)
        except Exception as e:
            if kind == SERVER:
                for r in running.values():
                    r.proc.stop()
                raise
            res.peer_notes[kind] = f"failed to start or serve: {str(e).splitlines()[0][:200]}"
            log.warning("%s did not start: %s", kind, e)
    return running


def run_model(
    res: Results, model_dir: Path, model: str, log_dir: Path, inproc: limits.Model
) -> None:
    """Steps 2-3 and the batching comparison for one model."""
    cfg = res.cfg
    load_photos = photos(LOAD_PHOTO)
    jpeg = load_photos[1].jpeg  # chelsea, 500x375
    kinds = [SERVER]
    for peer in cfg.peers:
        if peer == LITSERVE and not litserve_available():
            res.peer_notes[LITSERVE] = "not installed (pip install litserve); skipped"
            continue
        kinds.append(peer)
    running = _start_all(kinds, res, model_dir, model, jpeg, log_dir)
    try:
        res.policy[model] = batching_policy(running[SERVER].proc.url, model)
        res.paired[model] = paired_latency(inproc, model, running[SERVER].proc.url, jpeg,
                                           cfg.paired_requests)  # fmt: skip
        # Closed loop, interleaved: every repeat walks every level, every level every server.
        steps = cfg.repeats * len(cfg.concurrency) * len(running)
        with tqdm(total=steps, desc=f"{model} closed loop", unit="phase") as bar:
            for rep in range(cfg.repeats):
                # The in-process ceiling again, between the load rounds (servers idle).
                rate, _, _ = limits.best_pooled(inproc, [load_photos[1]], cfg.pipeline_seconds * 0.75,
                                                res.pool_threads, cfg.max_batch_size)  # fmt: skip
                res.pipe[model].pooled_rounds.append(rate)
                for c in cfg.concurrency:
                    for run in running.values():
                        res.closed.append(measure(run, cfg, "closed", c, repeat=rep,
                                                  breakdowns=res.breakdowns))  # fmt: skip
                        bar.update()
        for kind in list(running):
            if kind != SERVER:
                running.pop(kind).proc.stop()
        # Open loop on our server at fractions of its closed-loop peak.
        ours = [r.throughput for r in res.closed if r.model == model and r.target == SERVER]
        peak = max(ours)
        rates = [max(1.0, f * peak) for f in cfg.open_loop_fractions]
        for i, rate in enumerate(tqdm(rates, desc=f"{model} open loop", unit="phase")):
            res.open.append(measure(running[SERVER], cfg, "open", rate, seed=i,
                                    breakdowns=res.breakdowns))  # fmt: skip
        # Batching policy: eager (the CPU default) against delay, interleaved.
        running.update(_start_all([DELAY], res, model_dir, model, jpeg, log_dir))
        res.policy[f"{model}/delay"] = batching_policy(running[DELAY].proc.url, model)
        steps = cfg.batching_repeats * len(cfg.batching_concurrency) * 2
        with tqdm(total=steps, desc=f"{model} batching", unit="phase") as bar:
            for rep in range(cfg.batching_repeats):
                for c in cfg.batching_concurrency:
                    for kind in (SERVER, DELAY):
                        res.batching.append(measure(running[kind], cfg, "closed", c,
                                                    repeat=rep, breakdowns=res.breakdowns))  # fmt: skip
                        bar.update()
    finally:
        for run in running.values():
            run.proc.stop()


def run_all(res: Results, model_dir: Path, log_dir: Path) -> Results:
    """Every step for every model; fills ``res`` in place and returns it."""
    t0 = time.monotonic()
    models = run_limits(res, model_dir)
    for name in res.cfg.models:
        run_model(res, model_dir, name, log_dir, models[name])
    res.duration_s = time.monotonic() - t0
    res.load_after = load_average()
    return res


__all__ = ["LITSERVE", "NAIVE", "SERVER", "Results", "cpu_info", "run_all"]
