"""Latency while model versions swap, against the same server left alone.

One server (``model_control=explicit``) serves ``<model>`` from a versioned directory: version
1 is ``--v1`` and version 2 is ``--v2`` (another export, e.g. another seed). Phases, closed loop
at ``--concurrency`` on ``/predict/<model>`` with one JPEG, interleaved in rounds:

- ``steady``: nothing else happens;
- ``swapping``: a thread swaps v1 -> v2 -> v1 ... through ``POST /v2/repository/models/<model>/load``
  every ``--every`` seconds (version 2's directory added or removed before each call), so each
  load (open, agreement check, warm-up) and each drain falls inside the phase.

With ``--rate`` the load is an open loop (Poisson arrivals) instead, e.g. at half the
machine's capacity, where a load's CPU can use the idle half. Reported: throughput, p50,
p99, errors, and the swaps done. The loads share the machine's cores
with the traffic: on a small CPU that is most of the cost.

    python -m bench.swaps --v1 models/resnet18.onnx --v2 /path/seed1/resnet18.onnx \\
        [--seconds 20] [--every 4] [--concurrency 4 | --rate 40]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from .images import photo
from .load import PhaseResult, Target, closed_loop, open_loop
from .procs import free_port, start

WARMUP_S = 1.5
ROUNDS = 2


def _swapper(
    url: str,
    model: str,
    v2_dir: Path,
    v2_file: Path,
    every: float,
    stop: threading.Event,
    done: list[float],
) -> None:
    """Swap until ``stop``: add or remove version 2, then load; ``done`` gets each load's
    seconds. Raises if a load fails (the benchmark is then void)."""
    with httpx.Client(base_url=url, timeout=120) as c:
        while not stop.wait(every):
            if v2_dir.exists():
                shutil.rmtree(v2_dir)
            else:
                v2_dir.mkdir()
                (v2_dir / "model.onnx").symlink_to(v2_file)
            begin = time.monotonic()
            r = c.post(f"/v2/repository/models/{model}/load")
            if r.status_code != 200:
                raise RuntimeError(f"load failed: {r.status_code} {r.text}")
            done.append(time.monotonic() - begin)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.swaps", description=__doc__.split("\n\n")[0])
    p.add_argument("--v1", type=Path, required=True, help="version 1's .onnx file")
    p.add_argument("--v2", type=Path, required=True, help="version 2's .onnx file")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per phase")
    p.add_argument("--every", type=float, default=4.0, help="seconds between swaps")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="open loop at this many requests/s (Poisson) instead of the closed loop",
    )
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-swaps-"))
    (root / args.model / "1").mkdir(parents=True)
    (root / args.model / "1" / "model.onnx").symlink_to(args.v1.resolve())
    v2_dir = root / args.model / "2"
    port = free_port()
    log_dir = Path("bench/out")
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "RESNET_MODEL_DIR": str(root),
        "RESNET_DEFAULT_MODEL": args.model,
        "RESNET_PORT": str(port),
        "RESNET_PROVIDER": "cpu",
        "RESNET_UI": "false",
        "RESNET_MODEL_CONTROL": "explicit",
    }
    srv = start("swaps", ["-m", "server"], env, port, log_dir)
    jpeg = photo("chelsea", (500, 375)).jpeg
    target = Target("swaps", args.model, port, f"/predict/{args.model}", jpeg, "image/jpeg")
    rows: dict[str, list[tuple[PhaseResult, int]]] = {"steady": [], "swapping": []}
    try:
        srv.wait_ready("/readyz")
        for rnd in range(args.rounds):
            for phase_name in rows:
                stop, loads = threading.Event(), list[float]()
                swapper = None
                if phase_name == "swapping":
                    swapper = threading.Thread(
                        target=_swapper,
                        args=(srv.url, args.model, v2_dir, args.v2, args.every, stop, loads),
                    )
                    swapper.start()
                if args.rate:
                    work = open_loop(target, args.rate, args.seconds, WARMUP_S, seed=rnd)
                else:
                    work = closed_loop(target, args.concurrency, args.seconds, WARMUP_S)
                phase = asyncio.run(work)
                stop.set()
                if swapper is not None:
                    swapper.join()
                rows[phase_name].append((phase, len(loads)))
                load_s = f", load {statistics.fmean(loads):.2f} s mean" if loads else ""
                print(
                    f"round {rnd + 1} {phase_name:8s} {phase.throughput:6.1f}/s p50 "
                    f"{phase.pct(50) * 1e3:6.1f} ms p99 {phase.pct(99) * 1e3:6.1f} ms errors "
                    f"{phase.errors + phase.rejected} swaps {len(loads)}{load_s}",
                    flush=True,
                )
    finally:
        srv.stop()
        shutil.rmtree(root, ignore_errors=True)
    med = statistics.median
    print(
        "\n| phase | images/s | p50 ms | p99 ms (rounds) | errors | swaps |\n|---|---|---|---|---|---|"
    )
    for name, rs in rows.items():
        p99s = " / ".join(f"{r.pct(99) * 1e3:.1f}" for r, _ in rs)
        print(
            f"| {name} | {med(r.throughput for r, _ in rs):.1f} | "
            f"{med(r.pct(50) for r, _ in rs) * 1e3:.1f} | {med(r.pct(99) for r, _ in rs) * 1e3:.1f} "
            f"({p99s}) | {sum(r.errors + r.rejected for r, _ in rs)} | {sum(n for _, n in rs)} |"
        )


if __name__ == "__main__":
    main()
