"""Raw ONNX Runtime on the GPU: images/s by batch size, IO mode and precision, and agreement.

``python -m bench.gpu_raw MODEL_DIR --out raw.json`` on a machine with ``onnxruntime-gpu``
(docs/BENCHMARKS.md, "GPU" section; ``bench/gpu_session.sh`` runs it on the lent GPU machine).
For each model file in MODEL_DIR (``resnet18.onnx``, ``resnet50.onnx``, their ``-fp16`` files):

- **agreement** of the CUDA provider's logits (TF32 off and on for fp32 files) with ONNX
  Runtime's CPU provider on the fp32 file, on the seven verification photos;
- **images/s** at batch 1..256 in two IO modes: ``device`` (input and output stay in GPU
  memory: the engine's ceiling) and ``engine`` (the server's own ``OrtEngine.run``: host uint8
  in, host float32 logits out, copies included);
- **IO variants and instances** at a few batch sizes for ResNet50: plain ``session.run``, the
  engine, CUDA graphs, and two sessions run from two threads.

``--provider cpu`` runs the same code on the CPU provider (a dry run of the script, not a
measurement of anything that matters). Figures are throughput over at least ``--seconds`` per
point after warm-up runs; compare within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from contract.agreement import compare
from contract.modelmeta import parse_metadata
from contract.photos import photo_batch, verification_photos
from server.models.engines import EngineOptions
from server.models.engines.ort_engine import OrtEngine, provider_list, session_options

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def providers(provider: str, tf32: int, graph: bool = False) -> list[Any]:
    """The server's own provider list (``provider_list``), with TF32 and CUDA graphs as asked."""
    listed = provider_list(provider)
    if provider == "cpu":
        return listed
    (cuda, options), cpu = listed
    extra = {"use_tf32": tf32, **({"enable_cuda_graph": 1} if graph else {})}
    return [(cuda, {**options, **extra}), cpu]


def session(path: Path, provider: str, tf32: int = 0, graph: bool = False) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(path), sess_options=session_options(1), providers=providers(provider, tf32, graph)
    )


def rate(fn: Callable[[], object], images: int, seconds: float) -> float:
    """Images/s of ``fn`` (one batch of ``images``) over at least ``seconds`` and 5 calls."""
    for _ in range(2):
        fn()
    calls, start = 0, time.perf_counter()
    while calls < 5 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return images * calls / (time.perf_counter() - start)


def device_mode(sess: ort.InferenceSession, batch: np.ndarray, device: str) -> Callable[[], None]:
    """Input and output preallocated in ``device`` memory; each call is one run, synchronised."""
    meta = parse_metadata(sess.get_modelmeta().custom_metadata_map)
    x = ort.OrtValue.ortvalue_from_numpy(batch, device, 0)
    y = ort.OrtValue.ortvalue_from_shape_and_type((len(batch), 1000), np.float32, device, 0)
    binding = sess.io_binding()
    binding.bind_ortvalue_input(meta.input_name, x)
    binding.bind_ortvalue_output(meta.output_name, y)

    def call() -> None:
        sess.run_with_iobinding(binding)

    return call


def agreement(path: Path, provider: str, reference: np.ndarray, photos: np.ndarray) -> list[Any]:
    rows = []
    tf32s = (0, 1) if provider == "cuda" and "fp16" not in path.name else (0,)
    for tf32 in tf32s:
        sess = session(path, provider, tf32)
        meta = parse_metadata(sess.get_modelmeta().custom_metadata_map)
        logits = sess.run([meta.output_name], {meta.input_name: photos})[0]
        a = compare(reference, logits)
        diff = np.abs(logits.astype(np.float64) - reference)
        rows.append(
            {
                "file": path.name,
                "tf32": tf32,
                "providers": sess.get_providers(),
                "max_abs_logit_diff": float(diff.max()),
                "logit_scale": float(np.abs(reference).max()),
                **a.to_dict(),
            }
        )
        print(
            f"agreement {path.name} tf32={tf32}: max|d|={diff.max():.3g} "
            f"(scale {np.abs(reference).max():.3g}) top1={a.top1:.3f} "
            f"L1max={a.softmax_l1_max:.3g}",
            flush=True,
        )
    return rows


def sweep(path: Path, provider: str, seconds: float, batches: tuple[int, ...]) -> list[Any]:
    rows = []
    tf32s = (0, 1) if provider == "cuda" and "fp16" not in path.name else (0,)
    rng = np.random.default_rng(0)
    for tf32 in tf32s:
        sess = session(path, provider, tf32)
        dev = "cuda" if provider == "cuda" else "cpu"
        engine = _engine(path, provider, tf32)
        for n in batches:
            batch = rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
            d = rate(device_mode(sess, batch, dev), n, seconds)
            e = rate(partial(engine.run, 0, batch), n, seconds)
            rows.append(
                {"file": path.name, "tf32": tf32, "batch": n, "device_ips": d, "engine_ips": e}
            )
            print(
                f"{path.name:22s} tf32={tf32} b={n:3d}: device {d:8.1f} img/s  "
                f"engine {e:8.1f} img/s",
                flush=True,
            )
    return rows


def _engine(path: Path, provider: str, tf32: int, instances: int = 1) -> OrtEngine:
    engine = OrtEngine(path, EngineOptions(provider=provider, threads=1, instances=instances))
    if tf32 and provider == "cuda":  # the engine's own sessions are TF32-off; rebuild them
        engine.sessions = [session(path, provider, tf32) for _ in range(instances)]
    return engine


def io_variants(path: Path, provider: str, seconds: float, batches: tuple[int, ...]) -> list[Any]:
    """session.run vs the engine vs CUDA graphs vs two sessions from two threads."""
    rows = []
    rng = np.random.default_rng(1)
    sess = session(path, provider)
    meta = parse_metadata(sess.get_modelmeta().custom_metadata_map)
    engine = _engine(path, provider, 0, instances=2)
    for n in batches:
        batch = rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
        row: dict[str, Any] = {"file": path.name, "batch": n}
        feed = {meta.input_name: batch}
        row["session_run_ips"] = rate(partial(sess.run, [meta.output_name], feed), n, seconds)
        row["engine_ips"] = rate(partial(engine.run, 0, batch), n, seconds)
        row["engine_2_threads_ips"] = _two_threads(engine, batch, seconds)
        row["cuda_graph_device_ips"] = _graph(path, provider, batch, seconds)
        rows.append(row)
        print(
            f"io {path.name} b={n}: "
            + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if k.endswith("ips") and v),
            flush=True,
        )
    return rows


def _two_threads(engine: OrtEngine, batch: np.ndarray, seconds: float) -> float:
    """Images/s of instances 0 and 1 running ``batch`` at once, each from its own thread; the
    clock starts once both have run it (a first run at a new shape re-plans)."""
    counts = [0, 0]
    ready = threading.Barrier(3)
    stop = [0.0]

    def loop(i: int) -> None:
        engine.run(i, batch)
        ready.wait()
        while time.perf_counter() < stop[0]:
            engine.run(i, batch)
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    stop[0] = float("inf")
    ready.wait()
    start = time.perf_counter()
    stop[0] = start + seconds * 2
    for t in threads:
        t.join()
    return sum(counts) * len(batch) / (time.perf_counter() - start)


def _graph(path: Path, provider: str, batch: np.ndarray, seconds: float) -> float | None:
    if provider != "cuda":
        return None
    try:
        sess = session(path, provider, graph=True)
        return rate(device_mode(sess, batch, "cuda"), len(batch), seconds)
    except Exception as e:  # a measurement: report it, go on
        print(f"cuda graph {path.name} b={len(batch)}: {type(e).__name__}: {e}", flush=True)
        return None


def shape_costs(path: Path, provider: str) -> dict[str, float]:
    """Milliseconds per run: a first run at an unseen batch size, the second run at it, and
    runs alternating between two seen sizes against runs repeating one (is the cost of a
    new shape paid once per shape, or on every change?)."""
    sess = session(path, provider)
    meta = parse_metadata(sess.get_modelmeta().custom_metadata_map)
    rng = np.random.default_rng(2)
    batches = {n: rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8) for n in (32, 37, 64)}

    def ms(n: int) -> float:
        start = time.perf_counter()
        sess.run([meta.output_name], {meta.input_name: batches[n]})
        return (time.perf_counter() - start) * 1e3

    out = {"first_32_ms": ms(32), "first_64_ms": ms(64)}
    out["first_37_ms"], out["second_37_ms"] = ms(37), ms(37)
    out["steady_32_ms"] = float(np.median([ms(32) for _ in range(10)]))
    out["steady_64_ms"] = float(np.median([ms(64) for _ in range(10)]))
    out["alternating_32_64_ms"] = float(np.median([ms(32) + ms(64) for _ in range(10)]) / 2)
    print(f"shapes {path.name}: " + ", ".join(f"{k} {v:.1f}" for k, v in out.items()), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_raw")
    p.add_argument("model_dir", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--provider", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--seconds", type=float, default=0.3)
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--only-shapes", action="store_true", help="only the shape-change costs")
    args = p.parse_args(argv)
    if args.only_shapes:
        shapes = {
            name: shape_costs(args.model_dir / name, args.provider)
            for name in ("resnet50.onnx", "resnet50-fp16.onnx")
        }
        args.out.write_text(json.dumps(shapes, indent=1))
        return 0
    batches = tuple(int(b) for b in args.batches.split(","))
    result: dict[str, Any] = {
        "onnxruntime": ort.__version__,
        "available": ort.get_available_providers(),
        "device": ort.get_device(),
        "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "agreement": [],
        "sweep": [],
        "io": [],
    }
    photos = photo_batch(verification_photos(), _spec(args.model_dir / "resnet18.onnx"))
    for arch in ("resnet18", "resnet50"):
        fp32 = args.model_dir / f"{arch}.onnx"
        ref_sess = session(fp32, "cpu")
        meta = parse_metadata(ref_sess.get_modelmeta().custom_metadata_map)
        reference = ref_sess.run([meta.output_name], {meta.input_name: photos})[0]
        for path in (fp32, args.model_dir / f"{arch}-fp16.onnx"):
            if not path.exists():
                continue
            ref64 = reference.astype(np.float64)
            steps: list[tuple[str, Callable[[], list[Any]]]] = [
                ("agreement", partial(agreement, path, args.provider, ref64, photos)),
                ("sweep", partial(sweep, path, args.provider, args.seconds, batches)),
            ]
            for key, fn in steps:
                try:
                    result[key] += fn()
                except Exception as e:  # keep measuring the rest, say what broke
                    print(f"{key} {path.name}: FAILED {type(e).__name__}: {e}", flush=True)
                    result.setdefault("failures", []).append(f"{key} {path.name}: {e}")
                args.out.write_text(json.dumps(result, indent=1))
    for name in ("resnet50.onnx", "resnet50-fp16.onnx"):
        try:
            result["io"] += io_variants(
                args.model_dir / name, args.provider, args.seconds, (1, 32, 128)
            )
        except Exception as e:
            print(f"io {name}: FAILED {type(e).__name__}: {e}", flush=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


def _spec(path: Path) -> Any:
    sess = session(path, "cpu")
    return parse_metadata(sess.get_modelmeta().custom_metadata_map).preprocessing


if __name__ == "__main__":
    sys.exit(main())
