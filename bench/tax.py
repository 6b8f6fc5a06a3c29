"""The per-request tax: CPU per request of each thread group, our server against the naive
peer, at concurrency 1 and at saturation (issue 27, part 3).

    python -m bench.tax --variant resnet18-int8@openvino --model-dir models --levels 1,16

Each round walks every level and both servers (interleaved), one closed-loop phase each,
with the other server paused (:func:`bench.procs.isolate`); per phase it prints req/s, p50
and core-ms per request of each thread group (:mod:`bench.threads`: CPU time from
``/proc/PID/task/*/schedstat``, robust to a shared machine, unlike the wall-clock figures),
voluntary context switches per request (thread wake-ups), and whether the phase shared the
machine (:mod:`bench.machine`). *Outside* = event loop + framework threads + other: the CPU
that is neither decoding (``preprocess_*``) nor the runner and runtime threads (which run
the engine).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from . import threads
from .config import PRESETS
from .images import photos
from .load import PhaseResult
from .sweep import measure
from .targets import NAIVE, SERVER, SPLIT, Running, start
from .variants import Variant

_GROUPS = (
    threads.LOOP,
    threads.POOL,
    threads.OTHER,
    threads.DECODE,
    threads.RUNNER,
    threads.RUNTIME,
)
_OUTSIDE = (threads.LOOP, threads.POOL, threads.OTHER)


def switches(run: Running) -> dict[int, tuple[str, int]]:
    """Voluntary context switches (each one a sleep, so a later wake-up) of every live thread
    of ``run``'s server so far: TID -> (thread group, count)."""
    pid = run.proc.proc.pid
    py = threads.python_threads(run.thread_log)
    out: dict[int, tuple[str, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    group = threads.group_of(pid, int(task.name), name, [run.variant.model], py)
                    out[int(task.name)] = (group, int(line.split()[1]))
        except OSError:
            continue
    return out


def wakeups(
    before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], n: int
) -> dict[str, float]:
    """Switches per request by group between two :func:`switches` (threads born in between
    count from zero; threads that ended in between are lost, an undercount)."""
    out: dict[str, float] = defaultdict(float)
    for tid, (group, count) in after.items():
        out[group] += (count - before.get(tid, (group, 0))[1]) / n
    return out


def per_request(phase: PhaseResult) -> dict[str, float]:
    """Core-ms per request of each thread group over the phase's measured span."""
    n = max(phase.span_responses, 1)
    return {g: 1e3 * phase.extra.get(f"cpu:{g}", 0.0) / n for g in _GROUPS}


def _flags(text: str) -> dict[str, str]:
    """``k=v,k=v`` -> server flags (``--k v``)."""
    return dict(kv.split("=", 1) for kv in text.split(",") if kv)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tax", description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="resnet18@cpu", help="NAME@PROVIDER")
    p.add_argument("--model-dir", type=Path, default=Path("models"))
    p.add_argument("--levels", default="1,16", help="closed-loop concurrencies")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=4.0, help="measured seconds per phase")
    p.add_argument("--flags", default="", help="extra server flags, k=v,k=v")
    p.add_argument(
        "--against",
        default=None,
        metavar="K=V,...",
        help="compare with our server started with these flags instead of the naive peer "
        "(e.g. instances=2, or batching=delay)",
    )
    args = p.parse_args(argv)
    variant = Variant.parse(args.variant)
    cfg = replace(
        PRESETS["quick"], phase_seconds=args.seconds, warmup_seconds=1.0, agreement_check=False
    )
    extra = _flags(args.flags)
    levels = [int(c) for c in args.levels.split(",")]
    jpeg = photos((500, 375))[1].jpeg  # the load photo of bench.run (chelsea)
    rows: dict[tuple[str, int], list[tuple[PhaseResult, dict[str, float]]]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="bench-tax-") as logs:
        running: dict[str, Running] = {}
        try:
            other = _flags(args.against) if args.against is not None else None
            launches = [
                (SERVER, extra),
                (NAIVE, {}) if other is None else (f"{SPLIT} {args.against}", {**extra, **other}),
            ]
            for kind, flags in launches:
                running[kind] = start(kind, variant, cfg, args.model_dir, jpeg, Path(logs), **flags)
            for _ in range(args.rounds):
                for c in levels:
                    for kind, run in running.items():
                        s0 = switches(run)
                        phase = measure(run, cfg, "closed", c)
                        wakes = wakeups(s0, switches(run), max(phase.ok, 1))
                        rows[(kind, c)].append((phase, wakes))
        finally:
            for run in running.values():
                run.proc.stop()
    head = [
        "server",
        "c",
        "req/s",
        "p50 ms",
        *(f"{g} ms/req" for g in _GROUPS),
        "outside ms/req",
        "wake-ups/req",
        "marked",
    ]
    print(f"{variant.key}: median over {args.rounds} rounds; CPU in core-ms per request")
    print(" | ".join(head))
    for (kind, c), got in rows.items():
        med = statistics.median
        cpu = {g: med(per_request(ph)[g] for ph, _ in got) for g in _GROUPS}
        out = [
            kind,
            str(c),
            f"{med(ph.throughput for ph, _ in got):.1f}",
            f"{1e3 * med(ph.pct(50) for ph, _ in got):.2f}",
            *(f"{cpu[g]:.2f}" for g in _GROUPS),
            f"{sum(cpu[g] for g in _OUTSIDE):.2f}",
            f"{med(sum(x.values()) for _, x in got):.1f} ("
            + ", ".join(f"{g} {med(x.get(g, 0.0) for _, x in got):.1f}" for g in _GROUPS)
            + ")",
            f"{sum(ph.marked for ph, _ in got)}/{len(got)} "
            f"({med(ph.others_cores for ph, _ in got):.2f} cores)",
        ]
        print(" | ".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
