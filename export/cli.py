"""Command line: ``python -m export resnet18 resnet50 --weights {imagenet,random,PATH}``.

Exit codes: 0 exported and verified; 1 verification failed; 2 bad arguments or weights
file; 3 published weights could not be downloaded (no silent fallback).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from export.fold import fuse_conv_bn
from export.onnx_export import DEFAULT_OPSET, NHWCUint8Classifier, build_metadata, export_onnx
from export.resnet import ARCHITECTURES, build
from export.verify import Report, verify
from export.weights import WeightsDownloadError, WeightsError, load_into, resolve

EXIT_VERIFY, EXIT_USAGE, EXIT_DOWNLOAD = 1, 2, 3


@dataclass(frozen=True)
class ExportOptions:
    weights: str
    weights_name: str | None
    seed: int
    out_dir: Path
    precision: str
    opset: int
    cache_dir: Path | None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="resnet-export", description=__doc__)
    p.add_argument("architectures", nargs="+", choices=sorted(ARCHITECTURES))
    p.add_argument(
        "--weights", default="imagenet", help="imagenet (default), random, or a state_dict path"
    )
    p.add_argument(
        "--weights-name", help="published weights name, e.g. IMAGENET1K_V2 (default: V1)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for --weights random (default 0)")
    p.add_argument("--out-dir", type=Path, default=Path("models"))
    p.add_argument(
        "--name", help="served model name, file <out-dir>/<name>.onnx (one architecture only)"
    )
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="weights cache (default $RESNET_WEIGHTS_CACHE or ~/.cache/resnet-server)",
    )
    p.add_argument("--skip-existing", action="store_true", help="leave existing files alone")
    args = p.parse_args(argv)
    if args.name and len(args.architectures) > 1:
        p.error("--name needs exactly one architecture")
    return args


def export_one(architecture: str, path: Path, opts: ExportOptions) -> Report:
    """Build, load weights, fold, export, verify one model; returns the verification report.

    Raises ``WeightsError`` / ``WeightsDownloadError`` when weights cannot be had.
    """
    weights = resolve(
        architecture, opts.weights, weights_name=opts.weights_name, seed=opts.seed,
        cache_dir=opts.cache_dir,
    )  # fmt: skip
    model = build(architecture)
    load_into(model, weights.state_dict)
    model.eval()
    pre = weights.preprocessing
    half = opts.precision == "fp16"
    wrapped = NHWCUint8Classifier(fuse_conv_bn(model), pre.mean, pre.std, half=half)
    meta = build_metadata(architecture, weights, opts.precision, opts.opset)
    export_onnx(wrapped, path, crop_size=pre.crop_size, opset=opts.opset, meta=meta)
    reference = NHWCUint8Classifier(model, pre.mean, pre.std)
    return verify(path, reference, precision=opts.precision, crop_size=pre.crop_size)


def _run(architecture: str, path: Path, opts: ExportOptions) -> int:
    start = time.perf_counter()
    # Verified first, published after: a model that fails verification never replaces a
    # good one in the model directory (it is kept beside it, under a name the server ignores).
    staging = path.with_name(path.name + ".unverified")
    try:
        report = export_one(architecture, staging, opts)
    except WeightsDownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DOWNLOAD
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    seconds = time.perf_counter() - start
    size_mb = staging.stat().st_size / 1e6
    report.add("file", True, f"{size_mb:.1f} MB, export+verify {seconds:.1f} s")
    if report.ok:
        os.replace(staging, path)
    print(report.format().replace(str(staging), str(path)), flush=True)
    if not report.ok:
        print(f"verification failed: {path} left unchanged; the rejected model is {staging}")
    return 0 if report.ok else EXIT_VERIFY


def main(argv: list[str] | None = None) -> int:
    """Export every requested architecture; returns the worst exit code."""
    args = parse_args(argv)
    opts = ExportOptions(
        args.weights, args.weights_name, args.seed, args.out_dir, args.precision, args.opset,
        args.cache_dir,
    )  # fmt: skip
    torch.set_grad_enabled(False)
    code = 0
    for architecture in args.architectures:
        path = opts.out_dir / f"{args.name or architecture}.onnx"
        if args.skip_existing and path.exists():
            print(f"skip {path}: exists")
            continue
        code = max(code, _run(architecture, path, opts))
    return code
