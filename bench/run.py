"""The whole benchmark, in order: the limits of every variant (raw engine, preprocessing, the
in-process pipeline, agreement with fp32), then per model the load sweeps of every served
variant with the peers on the fast one, the open-loop sweep and the batching comparison of the
fast one, the thread splits, and the overload phases. Returns a :class:`Results`."""

from __future__ import annotations

import contextlib
import logging
import platform
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from server.models.engines import openvino_installed

from . import agreement, limits, overload, procs, splits, summary
from .hw import load_average
from .images import photos
from .paired import paired_latency
from .results import Results
from .sweep import measure
from .targets import (
    DELAY,
    LITSERVE,
    OVERLOAD,
    SERVER,
    SPLIT,
    Running,
    litserve_available,
    served_model,
    start,
)
from .variants import Variant

log = logging.getLogger("bench")

LOAD_PHOTO = (500, 375)
"""Photo size uploaded in every load test, pixels (w, h)"""


@contextlib.contextmanager
def _timed(res: Results, step: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        res.steps[step] = res.steps.get(step, 0.0) + time.monotonic() - start


def _first_line(e: BaseException) -> str:
    """The gist of ``e``: its first line, and its last (a server's log tail ends with why it
    exited)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    gist = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return gist[:400]


def run_limits(res: Results, model_dir: Path) -> dict[str, limits.Model]:
    """Step 1 for every variant: open its engine, time it per batch size (all variants
    interleaved), preprocessing per photo size, the in-process pipeline, and its agreement
    with fp32. Variants whose engine cannot open here are dropped from the plan, with why.

    Returns the engines, kept for the in-process rounds interleaved with the load.
    """
    cfg = res.cfg
    models: dict[str, limits.Model] = {}
    for v in list(res.plan.limits):
        try:
            m = limits.Model(v, model_dir, res.threads)
        except Exception as e:
            res.plan.drop(v, f"its engine did not open: {_first_line(e)}")
            continue
        models[v.key] = m
        r = m.report
        res.engines[v.key] = {
            "precision": r.precision,
            "runtime": r.runtime,
            "devices": list(r.devices),
            "layers": dict(r.layers),
        }
        meta = m.meta
        res.files[m.path.name] = {
            "precision": meta.precision,
            "weights": meta.weights,
            "random_weights": str(meta.random_weights).lower(),
            "sha256": meta.weights_sha256,
        }
    if not models:
        raise RuntimeError(f"no variant could run here: {res.plan.skipped}")
    load_photos = photos(LOAD_PHOTO)
    res.load_jpeg_kb = len(load_photos[0].jpeg) / 1024
    first = next(iter(models.values()))
    base = limits.crops(first, load_photos)
    steps = 2 * len(models) * len(cfg.batch_sizes) + len(cfg.photo_sizes) + len(models)
    with tqdm(total=steps, desc="limits", unit="step") as bar:
        res.raw = limits.raw_engine(
            list(models.values()), base, cfg.batch_sizes, cfg.engine_seconds, progress=bar.update
        )
        for size in cfg.photo_sizes:
            res.prep.append(limits.preprocessing(first, photos(size), cfg.preprocess_seconds))
            bar.update()
        for key, m in models.items():
            res.pipe[key] = limits.pipeline(
                m, [load_photos[1]], cfg.pipeline_seconds, res.pool_threads, cfg.max_batch_size
            )
            bar.update()
    decode_s = limits.decode_cpu_s(first, load_photos[1], cfg.preprocess_seconds)
    for key in models:
        if (c := limits.ceiling(key, res.pool_threads, decode_s, res.raw)) is not None:
            res.ceiling[key] = c
    measure_agreement(res, models, model_dir)
    for arch in res.plan.archs:
        served = [v.key for v in res.plan.served_of(arch) if v.key in res.pipe]
        if served:
            res.fast[arch] = max(served, key=lambda k: res.pipe[k].ceiling_images_per_s)
    return models


def measure_agreement(res: Results, models: dict[str, limits.Model], model_dir: Path) -> None:
    """Every variant's logits on the agreement crops against its fp32 ONNX Runtime CPU
    variant's (opened for this if it is not measured), and what its file recorded."""
    for arch in res.plan.archs:
        ref_v = Variant(arch, "cpu")
        others = [m for k, m in models.items() if m.variant.arch == arch and k != ref_v.key]
        for m in others:
            if (rec := agreement.recorded(m.meta, m.variant.provider)) is not None:
                res.recorded[m.variant.key] = rec
        if not others:
            continue
        try:
            ref = models.get(ref_v.key) or limits.Model(ref_v, model_dir, res.threads)
        except Exception as e:
            for m in others:
                res.agreement_notes[m.variant.key] = f"no fp32 reference: {_first_line(e)}"
            continue
        crops = agreement.inputs(ref.meta.preprocessing, res.cfg.agreement_views)
        reference = ref.run(crops)
        for m in others:
            if m.meta.weights_sha256 != ref.meta.weights_sha256:
                res.agreement_notes[m.variant.key] = (
                    f"{m.path.name} was made from other weights than {ref.path.name} "
                    "(weights_sha256 differ): not comparable; export both from the same weights"
                )
                continue
            res.agreement[m.variant.key] = agreement.compare(reference, m.run(crops))


def _launch(
    res: Results,
    kind: str,
    v: Variant,
    model_dir: Path,
    jpeg: bytes,
    log_dir: Path,
    **flags: str,
) -> Running | Exception:
    """Start ``kind`` for ``v``; the exception instead if it did not start (thread-safe:
    touches nothing shared)."""
    try:
        return start(kind, v, res.cfg, model_dir, jpeg, log_dir, **flags)
    except Exception as e:
        log.warning("%s for %s did not start: %s", kind, v.key, e)
        return e


def _failed(res: Results, kind: str, v: Variant, e: Exception) -> None:
    """Record why ``kind`` did not start: a peer note, or the variant out of the load tests."""
    why = f"failed to start or serve: {_first_line(e)}"
    if kind == SERVER:
        res.plan.drop(v, f"not under load: the server {why}", load_only=True)
    else:
        res.peer_notes[f"{kind} ({v.key})"] = why


def _start(
    res: Results,
    kind: str,
    v: Variant,
    model_dir: Path,
    jpeg: bytes,
    log_dir: Path,
    **flags: str,
) -> Running | None:
    """Start one server; None (and why, recorded) if it did not start."""
    r = _launch(res, kind, v, model_dir, jpeg, log_dir, **flags)
    if isinstance(r, Exception):
        _failed(res, kind, v, r)
        return None
    return r


Launch = tuple[str, Variant, dict[str, str]]
"""(kind, variant, extra flags) of a server to start"""


def _start_all(
    res: Results, todo: list[Launch], model_dir: Path, jpeg: bytes, log_dir: Path
) -> dict[tuple[str, str], Running]:
    """Start several servers at once (start-up is not measured; waiting for each in turn
    would be most of a short run) and return those that started, by (kind, variant)."""
    if not todo:
        return {}
    with ThreadPoolExecutor(len(todo), thread_name_prefix="bench-start") as pool:
        futures = [
            (kind, v, pool.submit(_launch, res, kind, v, model_dir, jpeg, log_dir, **flags))
            for kind, v, flags in todo
        ]
    out = {}
    for kind, v, future in futures:
        if isinstance(r := future.result(), Exception):
            _failed(res, kind, v, r)
        else:
            out[(kind, v.key)] = r
    return out


def _peers(res: Results, fast: Variant) -> list[Launch]:
    out: list[Launch] = []
    for peer in res.cfg.peers:
        if peer == LITSERVE and not litserve_available():
            res.peer_notes[LITSERVE] = "not installed (pip install litserve); skipped"
        else:
            out.append((peer, fast, {}))
    return out


def run_arch(
    res: Results, model_dir: Path, arch: str, log_dir: Path, models: dict[str, limits.Model]
) -> None:
    """Everything after the limits for one architecture: load sweeps (with the paired
    latency), open loop, batching, thread splits, overload."""
    cfg = res.cfg
    load_photos = photos(LOAD_PHOTO)
    jpeg = load_photos[1].jpeg  # chelsea, 500x375
    running: dict[tuple[str, str], Running] = {}
    try:
        with _timed(res, f"{arch}: sweeps (servers, peers, paired latency, closed loop)"):
            planned = res.fast.get(arch)
            todo: list[Launch] = [(SERVER, v, {}) for v in res.plan.served_of(arch)]
            if planned is not None:  # the peers and the delay policy run the fast variant
                todo += [*_peers(res, Variant.parse(planned)), (DELAY, Variant.parse(planned), {})]
            running = _start_all(res, todo, model_dir, jpeg, log_dir)
            served = [run.variant for (kind, _), run in running.items() if kind == SERVER]
            if not served:
                return
            for v in served:
                res.served[v.key] = served_model(running[(SERVER, v.key)].proc.url, v.model)
                res.policy[v.key] = dict(res.served[v.key].get("batching", {}))
            if res.fast.get(arch) not in {v.key for v in served}:  # its server did not start
                res.fast[arch] = max(
                    (v.key for v in served), key=lambda k: res.pipe[k].ceiling_images_per_s
                )
            fast = Variant.parse(res.fast[arch])
            if fast.key != planned:  # the peers follow the fast variant that is served
                for key in [k for k in running if k[0] != SERVER]:
                    running.pop(key).proc.stop()
                todo = [*_peers(res, fast), (DELAY, fast, {})]
                running.update(_start_all(res, todo, model_dir, jpeg, log_dir))
            for v in served:
                with procs.isolate(running[(SERVER, v.key)].proc):
                    res.paired[v.key] = paired_latency(
                        models[v.key], running[(SERVER, v.key)].proc.url, jpeg, cfg.paired_requests
                    )
            swept = {k: r for k, r in running.items() if k[0] != DELAY}
            _closed_rounds(res, swept, fast, models, [load_photos[1]])
            for key in [k for k in running if k not in ((SERVER, fast.key), (DELAY, fast.key))]:
                running.pop(key).proc.stop()
        with _timed(res, f"{arch}: open loop and batching"):
            # Open loop on the fast variant at fractions of its closed-loop peak.
            top = summary.peak(res, fast.key)
            rates = [max(1.0, f * top.throughput) for f in cfg.open_loop_fractions] if top else []
            for i, rate in enumerate(tqdm(rates, desc=f"{fast.key} open loop", unit="phase")):
                res.open.append(
                    measure(
                        running[(SERVER, fast.key)],
                        cfg,
                        "open",
                        rate,
                        seed=i,
                        breakdowns=res.breakdowns,
                    )
                )
            _batching(res, running, fast)
            if (delay := running.pop((DELAY, fast.key), None)) is not None:
                delay.proc.stop()
        with _timed(res, f"{arch}: thread splits"):
            # The split layouts and the fast variant's overload servers start together (idle
            # servers cost no CPU); the default layout is the sweep's server.
            layouts = splits.layouts(res.pool_threads)[: cfg.splits]
            res.split_flags.update(layouts)
            todo = [(f"{SPLIT} {label}", fast, flags) for label, flags in layouts[1:]]
            running.update(_start_all(res, todo + _overloads(res, fast), model_dir, jpeg, log_dir))
            split_runs = {layouts[0][0]: running[(SERVER, fast.key)]}
            split_runs.update(
                {
                    label: running[(f"{SPLIT} {label}", fast.key)]
                    for label, _ in layouts[1:]
                    if (f"{SPLIT} {label}", fast.key) in running
                }
            )
            _splits(res, split_runs, fast)
            for key in [k for k in running if not k[0].startswith(OVERLOAD)]:
                running.pop(key).proc.stop()
        crop = overload.crop_bytes(models[fast.key].meta.preprocessing.crop_size)
        with _timed(res, f"{arch}: overload"):
            others = [v for v in served if v != fast] if cfg.overload_all else []
            for v in [fast, *others]:
                if v != fast:  # the fast variant's are running already
                    running.update(_start_all(res, _overloads(res, v), model_dir, jpeg, log_dir))
                for kind, _, _ in _overloads(res, v):
                    if (run := running.pop((kind, v.key), None)) is not None:
                        try:
                            _overload(res, run, crop)
                        finally:
                            run.proc.stop()
    finally:
        for run in running.values():
            run.proc.stop()


def _overloads(res: Results, v: Variant) -> list[Launch]:
    """The overload servers of ``v``: one per queue timeout of the configuration."""
    return [
        (f"{OVERLOAD} {t:g} ms", v, {"queue-timeout-ms": f"{t:g}"})
        for t in res.cfg.overload_queue_timeouts_ms
    ]


def _closed_rounds(
    res: Results,
    running: dict[tuple[str, str], Running],
    fast: Variant,
    models: dict[str, limits.Model],
    pooled_photos: list[Any],
) -> None:
    """Closed loop, interleaved: every round walks every level, every level every server
    (the fast variant and the peers at every level, the other variants at theirs)."""
    cfg = res.cfg

    def levels(key: tuple[str, str]) -> tuple[int, ...]:
        return cfg.concurrency if key[1] == fast.key else cfg.secondary_concurrency

    all_levels = sorted({c for k in running for c in levels(k)})
    steps = cfg.repeats * sum(len(levels(k)) for k in running)
    ours = [run.variant.key for (kind, _), run in running.items() if kind == SERVER]
    with tqdm(total=steps, desc=f"{fast.arch} closed loop", unit="phase") as bar:
        for rep in range(cfg.repeats):
            # The in-process ceilings again, between the load rounds (every server paused).
            for variant in ours:
                with procs.isolate(None):
                    rate, _, _ = limits.best_pooled(
                        models[variant],
                        pooled_photos,
                        cfg.pipeline_seconds * 0.75,
                        res.pool_threads,
                        cfg.max_batch_size,
                    )
                res.pipe[variant].pooled_rounds.append(rate)
            for c in all_levels:
                for key, run in running.items():
                    if c in levels(key):
                        res.closed.append(
                            measure(run, cfg, "closed", c, repeat=rep, breakdowns=res.breakdowns)
                        )
                        bar.update()


def _batching(res: Results, running: dict[tuple[str, str], Running], fast: Variant) -> None:
    """Eager (the CPU default) against delay, interleaved, on the fast variant (the delay
    server was started with the others)."""
    cfg = res.cfg
    delay = running.get((DELAY, fast.key))
    if delay is None:
        return
    res.policy[f"{fast.key}/delay"] = dict(served_model(delay.proc.url, fast.model)["batching"])
    steps = cfg.batching_repeats * len(cfg.batching_concurrency) * 2
    with tqdm(total=steps, desc=f"{fast.key} batching", unit="phase") as bar:
        for rep in range(cfg.batching_repeats):
            for c in cfg.batching_concurrency:
                for kind in (SERVER, DELAY):
                    res.batching.append(
                        measure(
                            running[(kind, fast.key)],
                            cfg,
                            "closed",
                            c,
                            repeat=rep,
                            breakdowns=res.breakdowns,
                        )
                    )
                    bar.update()


def _overload(res: Results, run: Running, crop: int) -> None:
    """Open loop at ``overload_factor`` x the variant's closed-loop peak on ``run`` (a fresh
    server with the phase's queue timeout); RSS sampled throughout."""
    cfg, v = res.cfg, run.variant
    top = summary.peak(res, v.key)
    if top is None or not top.throughput:
        return
    pid = run.proc.proc.pid
    rss0, hwm0 = procs.vm_bytes(pid, "VmRSS"), procs.vm_bytes(pid, "VmHWM")
    with overload.RssSampler(pid) as rss:
        phase = measure(
            run,
            cfg,
            "open",
            cfg.overload_factor * top.throughput,
            seconds=cfg.overload_seconds,
            warmup=cfg.overload_warmup_seconds,
            seed=7,
        )
    limits_ = overload.Limits.of(run.flags)
    res.overload.append(
        overload.Overload(
            v.key,
            top.throughput,
            cfg.overload_factor,
            limits_,
            crop,
            phase,
            rss0,
            procs.vm_bytes(pid, "VmRSS"),
            rss.peak,
            hwm0,
            procs.vm_bytes(pid, "VmHWM"),
            {k.removeprefix("srv:"): x for k, x in phase.extra.items() if k.startswith("srv:")},
        )
    )
    tqdm.write(
        f"overload {v.key} (queue timeout {limits_.queue_timeout_ms:g} ms): {phase.ok} "
        f"accepted, {phase.rejected} refused {phase.refusal_codes}, {phase.errors} errors"
    )


def _splits(res: Results, running: dict[str, Running], fast: Variant) -> None:
    """Thread splits (label -> its server) of the fast variant at concurrency 1 and at its
    saturation, interleaved."""
    cfg = res.cfg
    sat = summary.saturation(res, fast.key)
    levels = sorted({1, int(sat.level) if sat else max(cfg.concurrency)})
    steps = cfg.split_repeats * len(levels) * len(running)
    with tqdm(total=steps, desc=f"{fast.key} thread splits", unit="phase") as bar:
        for rep in range(cfg.split_repeats):
            for c in levels:
                for label, run in running.items():
                    phase = measure(run, cfg, "closed", c, repeat=rep)
                    phase.target = f"{SPLIT} {label}"
                    res.splits.append(phase)
                    bar.update()


def runtimes() -> dict[str, str]:
    import onnxruntime as ort

    out = {"python": platform.python_version(), "onnxruntime": ort.__version__}
    if openvino_installed():
        with contextlib.suppress(Exception):
            import openvino

            out["openvino"] = openvino.get_version().split("-")[0]
    return out


def run_all(res: Results, model_dir: Path, log_dir: Path) -> Results:
    """Every step for every variant; fills ``res`` in place and returns it."""
    t0 = time.monotonic()
    res.runtimes = runtimes()
    with _timed(res, "limits (engines, preprocessing, pipeline, agreement)"):
        models = run_limits(res, model_dir)
    for arch in res.plan.archs:
        mine = {k: m for k, m in models.items() if m.variant.arch == arch}
        run_arch(res, model_dir, arch, log_dir, mine)
        for k in mine:  # free this architecture's engines before the next one's servers
            models.pop(k)
    res.duration_s = time.monotonic() - t0
    res.load_after = load_average()
    return res


__all__ = ["LITSERVE", "OVERLOAD", "SERVER", "Results", "run_all"]
