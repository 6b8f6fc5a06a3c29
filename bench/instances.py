"""Instances x intra-op threads on a small CPU: two server layouts measured interleaved.

``python -m bench.instances MODEL CONCURRENCY[,CONCURRENCY...]`` starts one server with the
defaults (one session, intra-op threads = CPUs) and one with ``RESNET_INTRA_OP_THREADS=1
RESNET_INSTANCES=<CPUs>``, then alternates 5 s closed-loop phases between them (2 rounds) and
prints medians. Results are recorded in docs/BATCHING.md.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from pathlib import Path

from contract.cpuinfo import available_cpus

from .images import photo
from .load import Target, closed_loop
from .procs import ServerProc, free_port, start

ROUNDS, PHASE_S, WARMUP_S = 2, 5.0, 1.0


def layouts() -> dict[str, dict[str, str]]:
    cpus = str(available_cpus())
    return {
        f"1 session x {cpus} threads (default)": {},
        f"{cpus} sessions x 1 thread": {"RESNET_INTRA_OP_THREADS": "1", "RESNET_INSTANCES": cpus},
    }


def _start(model: str, extra: dict[str, str], log_dir: Path) -> ServerProc:
    port = free_port()
    env = dict(
        RESNET_MODEL_DIR="models",
        RESNET_MODELS=model,
        RESNET_DEFAULT_MODEL=model,
        RESNET_PORT=str(port),
        RESNET_MAX_QUEUE_SIZE="256",
        **extra,
    )
    proc = start("server", ["-m", "server"], env, port, log_dir)
    proc.wait_ready("/readyz")
    return proc


def main(argv: list[str]) -> None:
    model, levels = argv[0], [int(c) for c in argv[1].split(",")]
    jpeg = photo("chelsea", (500, 375)).jpeg
    log_dir = Path("bench/out")
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = {name: _start(model, extra, log_dir) for name, extra in layouts().items()}
    rates: dict[tuple[int, str], list[float]] = {}
    try:
        for _ in range(ROUNDS):
            for c in levels:
                for name, proc in procs.items():
                    target = Target(name, model, proc.port, f"/predict/{model}", jpeg, "image/jpeg")
                    phase = asyncio.run(closed_loop(target, c, PHASE_S, WARMUP_S))
                    rates.setdefault((c, name), []).append(phase.throughput)
    finally:
        for proc in procs.values():
            proc.stop()
    for (c, name), r in rates.items():
        print(
            f"{model} concurrency {c:3d}  {name:28s} {statistics.median(r):6.1f} req/s "
            f"(rounds {', '.join(f'{x:.1f}' for x in r)})"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
