"""Two checkouts of the server, side by side: is a change neutral for the request path?

``python -m bench.ab --before DIR [--after DIR]`` starts ``python -m server`` from each
checkout (``DIR`` is a checkout's root, e.g. ``git worktree add /tmp/base main``; ``--after``
defaults to this one), both on the same ``--model-dir``, and measures ``POST /predict/<model>``
(a 640x480 JPEG photo) in interleaved rounds: per round and concurrency, one closed-loop phase against each, the other
server paused (SIGSTOP of its process group) and the CPU of every other process measured
(a phase where the rest of the machine used more than ``bench.machine.OTHERS_LIMIT_CORES`` is
marked, as in the main benchmark). Prints the CPU, each phase, and per concurrency the median
throughput and p50 of each side and their ratio (after / before) over the rounds.
Refactors that must leave speed unchanged (issue 22) quote these ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from statistics import median

from contract.cpuinfo import read_cpuinfo

from . import machine
from .images import photo
from .load import PhaseResult, Target, closed_loop
from .procs import ROOT, ServerProc, free_port, isolate, start


def serve(name: str, root: Path, model_dir: Path, model: str, log_dir: Path) -> ServerProc:
    port = free_port()
    env = {
        "RESNET_MODEL_DIR": str(model_dir),
        "RESNET_PORT": str(port),
        "RESNET_HOST": "127.0.0.1",
        "RESNET_MODELS": model,
        "RESNET_PROVIDER": "cpu",
        "RESNET_LOG_LEVEL": "warning",
        "PYTHONPATH": str(root),
    }
    proc = start(name, ["-m", "server"], env, port, log_dir, cwd=root)
    try:
        proc.wait_ready("/readyz")
    except BaseException:
        proc.stop()  # its process group, before the error goes up
        raise
    return proc


def phase(proc: ServerProc, model: str, body: bytes, c: int, seconds: float) -> PhaseResult:
    target = Target(proc.name, model, proc.port, f"/predict/{model}", body, "image/jpeg")
    with isolate(proc):
        before = machine.snapshot()
        result = asyncio.run(closed_loop(target, c, seconds, warmup=1.0))
        used = machine.usage(before, machine.snapshot(), proc.proc.pid)
    result.others_cores = used.others_total
    result.marked = used.marked()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    ap.add_argument("--before", type=Path, required=True, help="the baseline checkout's root")
    ap.add_argument("--after", type=Path, default=ROOT, help="the changed checkout (this one)")
    ap.add_argument("--model-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--concurrency", default="1,8", help="comma-separated client counts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per phase")
    ap.add_argument("--log-dir", type=Path, default=ROOT / "bench" / "out" / "ab")
    args = ap.parse_args(argv)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in args.concurrency.split(",")]
    cpu = read_cpuinfo()
    print(f"CPU: {cpu.model} ({cpu.int8_units} int8, bf16 {cpu.bf16}); model {args.model}")
    body = photo("chelsea", (640, 480)).jpeg  # a phone-size upload, as the main benchmark
    procs: dict[str, ServerProc] = {}
    runs: dict[tuple[str, int], list[PhaseResult]] = {}
    try:
        for side, root in (("before", args.before), ("after", args.after)):
            procs[side] = serve(side, root.resolve(), args.model_dir, args.model, args.log_dir)
        for r in range(args.rounds):
            for c in levels:
                # Alternate which side goes first, so neither always follows the other.
                order = ("before", "after") if r % 2 == 0 else ("after", "before")
                for side in order:
                    res = phase(procs[side], args.model, body, c, args.seconds)
                    runs.setdefault((side, c), []).append(res)
                    flag = "  MARKED" if res.marked else ""
                    print(
                        f"round {r} c={c:<3} {side:<6} {res.throughput:7.1f} req/s "
                        f"p50 {res.pct(50) * 1e3:6.1f} ms  errors {res.errors + res.rejected}"
                        f"  others {res.others_cores:.2f} cores{flag}",
                        flush=True,
                    )
    finally:
        for p in procs.values():
            p.stop()
    for c in levels:
        tput = {s: median(x.throughput for x in runs[(s, c)]) for s in procs}
        p50 = {s: median(x.pct(50) for x in runs[(s, c)]) for s in procs}
        print(
            f"c={c}: before {tput['before']:.1f} req/s p50 {p50['before'] * 1e3:.1f} ms; "
            f"after {tput['after']:.1f} req/s p50 {p50['after'] * 1e3:.1f} ms; "
            f"throughput ratio {tput['after'] / tput['before']:.3f}, "
            f"p50 ratio {p50['after'] / p50['before']:.3f} (medians of {args.rounds})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
