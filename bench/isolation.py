"""What decoding in a worker process costs an ordinary image: ``python -m bench.isolation``.

The same photos through ``contract.images.preprocess.preprocess`` in this thread and through a
``server.flow.decodepool`` worker process (the server's default), interleaved image by image so
both see the same machine; prints the median wall time of each and their difference, and
checks the crops are byte-identical. One thread, one worker: the per-image tax of isolation.

``--server MODEL_DIR``: the same question for a whole server: two servers of ``--model``
(``decode_isolation=process`` and ``thread``), JPEG ``/predict`` closed-loop at each
``--concurrency``, in interleaved rounds, the other server paused (SIGSTOP of its process
group) during each phase and every phase's CPU of the rest of the machine printed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from contract.cpuinfo import read_cpuinfo
from contract.images.decode import DecodeLimits
from contract.images.preprocess import preprocess
from contract.modelmeta import Preprocessing
from contract.photos import verification_photos
from server.flow.decodepool import DecodeBudget, DecodePool

from .hw import load_average

SPEC = Preprocessing.from_dict(
    {
        "resize_size": 256,
        "crop_size": 224,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear",
    }
)


def _photos() -> list[tuple[str, bytes]]:
    from PIL import Image

    out = [(p.name, p.data) for p in verification_photos()]
    base = Image.open(io.BytesIO(out[5][1])).convert("RGB")  # grace_hopper.jpg, 512x600
    for name, size in [("0.25MP", (577, 433)), ("2MP", (1633, 1225)), ("12MP", (4000, 3000))]:
        buf = io.BytesIO()
        base.resize(size, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
        out.append((f"{name}.jpg", buf.getvalue()))
    return out


def servers(
    model_dir: Path,
    model: str,
    provider: str,
    levels: list[int],
    rounds: int,
    seconds: float,
    modes: list[str],
) -> None:
    """Both isolation modes of one server, side by side (see the module docstring)."""
    from PIL import Image

    from .load import Target, closed_loop
    from .procs import free_port, isolate, start

    buf = io.BytesIO()
    Image.open(io.BytesIO(_photos()[1][1])).convert("RGB").resize((500, 375)).save(
        buf, "JPEG", quality=90
    )
    body, logs = buf.getvalue(), Path(tempfile.mkdtemp(prefix="bench-isolation-"))
    running = {}
    for mode in modes:
        port = free_port()
        env = {
            "RESNET_MODEL_DIR": str(model_dir),
            "RESNET_MODELS": model,
            "RESNET_PORT": str(port),
            "RESNET_PROVIDER": provider,
            "RESNET_DECODE_ISOLATION": mode,
            "RESNET_BF16_VARIANTS": "off",
            "RESNET_AGREEMENT_CHECK": "false",
        }
        running[mode] = (start(f"server-{mode}", ["-m", "server"], env, port, logs), port)
    try:
        for srv, _ in running.values():
            srv.wait_ready("/readyz")
        results: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for r in range(rounds):
            for level in levels:
                for mode, (srv, port) in running.items():
                    target = Target(mode, model, port, f"/predict/{model}", body, "image/jpeg")
                    with isolate(srv):
                        cpu0 = _machine_busy()
                        res = asyncio.run(closed_loop(target, level, seconds, 1.0))
                        busy = _machine_busy() - cpu0
                    row = (res.throughput, res.pct(50) * 1e3, res.pct(99) * 1e3)
                    results.setdefault((mode, level), []).append(row)
                    print(
                        f"round {r} c={level:<3d} {mode:8s} {row[0]:7.1f} req/s  p50 "
                        f"{row[1]:6.1f} ms  p99 {row[2]:6.1f} ms  machine busy "
                        f"{busy / (seconds + 1.0):.2f} cores"
                    )
        print("medians over rounds (ratio: against the last mode):")
        for level in levels:
            med = {m: np.median(np.array(results[(m, level)]), axis=0) for m in modes}
            base = med[modes[-1]][0]
            print(
                f"c={level:<3d} "
                + " | ".join(
                    f"{m} {v[0]:.1f} req/s (p50 {v[1]:.1f} ms, p99 {v[2]:.1f}, ratio {v[0] / base:.3f})"
                    for m, v in med.items()
                )
            )
    finally:
        for srv, _ in running.values():
            srv.stop()


def _machine_busy() -> float:
    """Busy CPU seconds of the whole machine so far (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(x) for x in fields]
    return (sum(ticks) - ticks[3] - ticks[4]) / 100  # minus idle and iowait


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.isolation", description=__doc__)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--server", type=Path, metavar="MODEL_DIR")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--provider", default="openvino")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--modes", default="auto,process,thread", help="decode_isolation values")
    args = parser.parse_args(argv)
    if args.server is not None:
        levels = [int(c) for c in args.concurrency.split(",")]
        servers(
            args.server,
            args.model,
            args.provider,
            levels,
            args.rounds,
            args.seconds,
            args.modes.split(","),
        )
        return
    pool = DecodePool(DecodeBudget())
    worker, never, limits = pool.worker(), threading.Event(), DecodeLimits()
    out = np.empty((224, 224, 3), np.uint8)
    cpu = read_cpuinfo().describe()
    print(
        f"CPU: {cpu['model']} ({', '.join(cpu['matrix_flags'])}); load average "
        f"{load_average()[0]:.2f}"
    )
    print(f"{'photo':18s} {'bytes':>9s} {'thread ms':>10s} {'process ms':>11s} {'tax ms':>8s}")
    try:
        for name, data in _photos():
            thread, process = [], []
            for _ in range(args.repeats):
                t = time.perf_counter()
                expected = preprocess(data, SPEC, limits)
                thread.append(time.perf_counter() - t)
                t = time.perf_counter()
                worker.preprocess(data, SPEC, limits, out, never)
                process.append(time.perf_counter() - t)
            assert np.array_equal(out, expected), name
            a, b = statistics.median(thread) * 1e3, statistics.median(process) * 1e3
            print(f"{name:18s} {len(data):9d} {a:10.2f} {b:11.2f} {b - a:+8.2f}")
    finally:
        pool.close()


if __name__ == "__main__":
    main()
