"""``python -m bench``: run the benchmark and write the reports.

``--quick`` (resnet18: one fp32 and one fast variant, fewer levels, short phases),
``--smoke`` (tests, ~1 s phases), ``--variants NAME@PROVIDER,...`` (a subset),
``--out DIR`` (markdown, plots under DIR/bench/), ``--models``, ``--gpu``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import pickle
import shlex
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from contract.cpuinfo import available_cpus, read_cpuinfo

from . import report
from .config import PRESETS
from .hw import cpu_info, load_average
from .procs import ROOT
from .results import Results
from .run import run_all
from .variants import Variant, plan


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help="a few minutes: resnet18, one fp32 and one fast variant",
    )
    mode.add_argument("--smoke", action="store_true", help="tiny sizes for the self-check test")
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "docs",
        help="where BENCHMARKS.md, BATCHING.md and bench/*.png go (default docs/)",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="raw results file (default bench/out/results-MODE.json)",
    )
    p.add_argument(
        "--models", default=None, help="comma-separated architectures (default per mode)"
    )
    p.add_argument(
        "--variants",
        default=None,
        help="comma-separated NAME@PROVIDER to measure instead of the defaults, e.g. "
        "resnet18@cpu,resnet18-int8@openvino,resnet50-bf16@openvino",
    )
    p.add_argument("--model-dir", type=Path, default=ROOT / "models")
    p.add_argument("--threads", type=int, default=0, help="engine intra-op threads (0 = CPUs)")
    p.add_argument(
        "--gpu",
        action="store_true",
        help="CUDA provider for the server and raw ORT; report GPU utilisation",
    )
    p.add_argument("--no-peers", action="store_true", help="skip the peer servers")
    p.add_argument(
        "--no-agreement-check",
        action="store_true",
        help="start our servers with --agreement-check false, so that a file below its "
        "agreement floors (random weights) is measured under load too; said in the report",
    )
    p.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="PICKLE",
        help="no measurement: re-render the reports from a saved results pickle",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.render is not None:
        res = pickle.loads(args.render.read_bytes())
        for path in report.write(res, args.out):
            print(path)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    mode = "quick" if args.quick else "smoke" if args.smoke else "full"
    cfg = replace(
        PRESETS[mode],
        gpu=args.gpu,
        intra_op_threads=args.threads,
        agreement_check=not args.no_agreement_check,
    )
    if args.models:
        cfg = replace(cfg, models=tuple(m.strip() for m in args.models.split(",") if m.strip()))
    if args.no_peers:
        cfg = replace(cfg, peers=())
    if args.gpu:
        cfg = replace(cfg, peers=())  # the peers are CPU-only; GPU mode measures ours
    cpu = read_cpuinfo()
    try:
        explicit = None
        if args.variants:
            explicit = [Variant.parse(v) for v in args.variants.split(",") if v.strip()]
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    todo = plan(
        list(cfg.models), args.model_dir, cpu, quick=mode != "full", explicit=explicit, gpu=args.gpu
    )
    if not todo.served:
        print(
            f"nothing to measure in {args.model_dir}: {todo.skipped}; run `make models` first",
            file=sys.stderr,
        )
        return 2
    cfg = replace(cfg, models=tuple(todo.archs))
    res = Results(
        cfg=cfg,
        command=("python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)).strip(),
        started=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        cpu=cpu_info(),
        cpu_features=cpu.describe(),
        threads=args.threads or available_cpus(),
        pool_threads=available_cpus(),
        load_before=load_average(),
        plan=todo,
    )
    for key, why in todo.skipped.items():
        print(f"skipping {key}: {why}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as logs:
        run_all(res, args.model_dir, Path(logs))
    paths = report.write(res, args.out)
    json_path = args.json or ROOT / "bench" / "out" / f"results-{mode}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(_jsonable(res), indent=1, default=str))
    json_path.with_suffix(".pkl").write_bytes(pickle.dumps(res))  # for --render
    print(f"done in {res.duration_s:.0f} s; wrote", *[str(p) for p in paths], json_path, sep="\n  ")
    return 0


def _jsonable(res: Results) -> dict[str, object]:
    d = dataclasses.asdict(res)
    d["breakdowns"] = {
        "/".join(map(str, k)): dataclasses.asdict(v) for k, v in res.breakdowns.items()
    }
    phases = [
        *d["closed"],
        *d["open"],
        *d["batching"],
        *d["splits"],
        *(o["phase"] for o in d["overload"]),
    ]
    for phase in phases:
        phase["latencies_ms_p50_p90_p99"] = [float(x) for x in _pcts(phase.pop("latencies"))]
        refusals = phase.pop("refusal_latencies")
        phase["refusal_latencies_ms_p50_p90_p99"] = [float(x) for x in _pcts(refusals)]
    return d


def _pcts(lat: list[float]) -> list[float]:
    import numpy as np

    return [float(np.percentile(lat, q)) * 1000 for q in (50, 90, 99)] if lat else []
