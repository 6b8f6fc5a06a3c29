"""Command line: ``python -m export resnet18 resnet50 --weights {imagenet,random,PATH}``.

``--precision fp32|fp16|int8`` (files ``<arch>.onnx``, ``<arch>-fp16.onnx``,
``<arch>-int8.onnx``), checked on ``--provider`` (the engine that will serve the file) and on
ONNX Runtime's CPU provider. Exit codes: 0 exported and verified; 1 verification failed
(below the bound or an agreement floor); 2 bad arguments, weights file, provider or
calibration photos; 3 published weights could not be downloaded (no silent fallback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from contract.agreement import AgreementRecord, default_floors
from contract.cpuinfo import read_cpuinfo
from contract.modelmeta import CalibrationRecord, ReferenceLogits
from export.calibration import (
    CalibrationError,
    CalibrationSet,
    check_usable,
    folder_photos,
    samples,
    skimage_photos,
)
from export.fold import fuse_conv_bn
from export.onnx_export import (
    DEFAULT_OPSET,
    NHWCUint8Classifier,
    build_metadata,
    export_onnx,
    set_metadata,
)
from export.quantize import DEFAULT_RECIPE, quantize
from export.resnet import ARCHITECTURES, build
from export.verify import Report, Target, VerificationData, verification_data, verify
from export.weights import ResolvedWeights, WeightsDownloadError, WeightsError, load_into, resolve
from server.models.engines import FALLBACK, PROVIDERS, auto_provider, openvino_installed
from server.models.engines import provider as provider_traits

EXIT_VERIFY, EXIT_USAGE, EXIT_DOWNLOAD = 1, 2, 3
PRECISIONS = ("fp32", "fp16", "int8")
#: Calibration samples per photo: the centre crop, its mirror image, 2 random crops.
SAMPLES_PER_PHOTO = 4


class ProviderUnavailable(Exception):
    """The provider asked for cannot run on this machine; the message names the fix."""


@dataclass(frozen=True)
class ExportOptions:
    weights: str
    weights_name: str | None
    seed: int
    out_dir: Path
    precision: str
    opset: int
    cache_dir: Path | None
    provider: str = "auto"
    calibration_dir: Path | None = None
    floors: dict[str, float] = field(default_factory=dict)


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
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32 (default), fp16, or int8 (static QDQ, calibrated on real photos)",
    )
    p.add_argument(
        "--provider",
        choices=["auto", *PROVIDERS],
        default="auto",
        help="the engine that will serve the file; verification runs there and on ONNX "
        "Runtime's CPU provider (auto: cuda if available, else openvino if installed, else cpu)",
    )
    p.add_argument(
        "--calibration-dir",
        type=Path,
        help="int8: folder of calibration photos (default: scikit-image's data photos)",
    )
    p.add_argument(
        "--floor",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override an agreement floor of fp16/int8 (min_top1, min_top5_overlap, "
        "max_softmax_l1, max_rel_logit_error); repeatable",
    )
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
    try:
        args.floors = _parse_floors(args.floor)
        default_floors(args.precision).with_overrides(args.floors)
    except ValueError as e:
        p.error(str(e))
    return args


def _parse_floors(items: list[str]) -> dict[str, float]:
    floors = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            floors[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"--floor {item!r}: expected NAME=NUMBER, e.g. min_top1=0.9")
    return floors


def default_file_name(architecture: str, precision: str) -> str:
    """``resnet50.onnx`` for fp32, ``resnet50-int8.onnx`` for the others."""
    return f"{architecture}.onnx" if precision == "fp32" else f"{architecture}-{precision}.onnx"


def serving_providers(requested: str) -> list[str]:
    """The serving provider first, then ONNX Runtime CPU when different.

    Raises ``ProviderUnavailable`` naming the fix when the provider cannot run here.
    """
    provider = auto_provider() if requested == "auto" else requested
    traits = provider_traits(provider)
    if traits.runtime == "openvino" and not openvino_installed():
        raise ProviderUnavailable(
            "--provider openvino needs the OpenVINO runtime: pip install "
            "'resnet-server[openvino]'; or use --provider cpu"
        )
    if traits.gpu and traits.execution_provider not in ort.get_available_providers():
        raise ProviderUnavailable(
            "--provider cuda needs onnxruntime-gpu with a CUDA device; this onnxruntime offers "
            f"{ort.get_available_providers()}: use --provider cpu or openvino"
        )
    return [provider] if provider == FALLBACK else [provider, FALLBACK]


def _reference(data: VerificationData) -> ReferenceLogits:
    photos = tuple((p.name, p.sha256) for p in data.photos)
    logits = data.reference[data.photo_rows].astype(np.float32)
    how = f"torch {torch.__version__}, float64, unfused model, photos by contract.images.preprocess"
    return ReferenceLogits(photos, logits, how)


def _export_float(
    path: Path,
    model: nn.Module,
    weights: ResolvedWeights,
    meta: dict[str, str],
    opts: ExportOptions,
) -> None:
    pre = weights.preprocessing
    half = opts.precision == "fp16"
    wrapped = NHWCUint8Classifier(fuse_conv_bn(model), pre.mean, pre.std, half=half)
    export_onnx(wrapped, path, crop_size=pre.crop_size, opset=opts.opset, meta=meta)


def _calibration_photos(opts: ExportOptions) -> CalibrationSet:
    """The INT8 calibration photos, each checked (decodes, is no verification photo)."""
    chosen = folder_photos(opts.calibration_dir) if opts.calibration_dir else skimage_photos()
    check_usable(chosen.photos)
    return chosen


def _calibration(
    chosen: CalibrationSet, weights: ResolvedWeights
) -> tuple[np.ndarray, CalibrationRecord]:
    inputs = samples(chosen.photos, weights.preprocessing, per_photo=SAMPLES_PER_PHOTO)
    recipe = DEFAULT_RECIPE
    record = CalibrationRecord(
        method=recipe.method,
        per_channel=recipe.per_channel,
        activation_type=recipe.activation_type,
        weight_type=recipe.weight_type,
        reduce_range=recipe.reduce_range,
        quant_format="QDQ",
        photos=len(chosen.photos),
        samples=len(inputs),
        source=chosen.source,
        options={
            "op_types": recipe.describe()["op_types"],
            **recipe.options,
            "samples_per_photo": SAMPLES_PER_PHOTO,
        },
    )
    return inputs, record


def _export_int8(
    path: Path,
    model: nn.Module,
    weights: ResolvedWeights,
    meta: dict[str, str],
    opts: ExportOptions,
    target: Target,
    calibration: tuple[np.ndarray, CalibrationRecord],
) -> Report:
    """Export fp32, verify it, quantise it on calibration photos, return the INT8 report."""
    inputs, record = calibration
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "fp32.onnx"
        _export_float(base, model, weights, {**meta, "precision": "fp32"}, opts)
        # The fp32 base is checked on ONNX Runtime CPU only: the INT8 file is what will serve.
        base_target = Target(target.data, ["cpu"], target.floors, target.cpu)
        base_report = verify(base, base_target, "fp32")
        if not base_report.ok:
            base_report.path = path
            return base_report
        quantize(base, path, inputs, DEFAULT_RECIPE)
    set_metadata(path, {**meta, "calibration": json.dumps(record.to_dict())})
    return verify(path, target, "int8")


def export_one(architecture: str, path: Path, opts: ExportOptions) -> Report:
    """Build, load weights, fold, export, verify one model; returns the verification report.

    Reduced precisions get their ``agreement`` metadata whether they pass or not (a rejected
    file is kept for inspection, never published).
    Raises ``WeightsError`` / ``WeightsDownloadError`` when weights cannot be had,
    ``ProviderUnavailable`` and ``CalibrationError`` with the fix in the message.
    """
    providers = serving_providers(opts.provider)
    floors = default_floors(opts.precision).with_overrides(opts.floors)
    # Calibration photos first: a corrupt one fails before any slow step (a download of
    # published weights, the BatchNorm statistics of random ones).
    photos = _calibration_photos(opts) if opts.precision == "int8" else None
    weights = resolve(
        architecture,
        opts.weights,
        weights_name=opts.weights_name,
        seed=opts.seed,
        cache_dir=opts.cache_dir,
    )
    model = build(architecture)
    load_into(model, weights.state_dict)
    model.eval()
    calibration = _calibration(photos, weights) if photos is not None else None
    data = verification_data(model, weights.preprocessing)
    meta = build_metadata(architecture, weights, opts.precision, opts.opset, _reference(data))
    target = Target(data, providers, floors, read_cpuinfo())
    if calibration is not None:
        report = _export_int8(path, model, weights, meta, opts, target, calibration)
    else:
        _export_float(path, model, weights, meta, opts)
        report = verify(path, target, opts.precision)
    if opts.precision != "fp32" and report.measurements:
        record = AgreementRecord(opts.precision, providers[0], floors, tuple(report.measurements))
        set_metadata(path, {"agreement": json.dumps(record.to_dict())})
    return report


def _run(architecture: str, path: Path, opts: ExportOptions) -> int:
    start = time.perf_counter()
    # Verified first, published after: a model that fails verification never replaces a
    # good one in the model directory (it is kept beside it, under a name the server ignores).
    staging = path.with_name(path.name + ".unverified")
    staging.unlink(missing_ok=True)  # a rejected file of an earlier run is not this run's
    try:
        report = export_one(architecture, staging, opts)
    except WeightsDownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DOWNLOAD
    except (WeightsError, ProviderUnavailable, CalibrationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    seconds = time.perf_counter() - start
    # An INT8 export whose fp32 base failed writes no file: its report says why.
    written = staging.exists()
    size = f"{staging.stat().st_size / 1e6:.1f} MB" if written else "not written"
    report.add("file", True, f"{size}, export+verify {seconds:.1f} s")
    if report.ok:
        os.replace(staging, path)
    print(report.format().replace(str(staging), str(path)), flush=True)
    if not report.ok:
        kept = f"; the rejected model is {staging}" if written else ""
        print(f"verification failed: {path} left unchanged{kept}")
    return 0 if report.ok else EXIT_VERIFY


def main(argv: list[str] | None = None) -> int:
    """Export every requested architecture; returns the worst exit code."""
    args = parse_args(argv)
    opts = ExportOptions(
        args.weights,
        args.weights_name,
        args.seed,
        args.out_dir,
        args.precision,
        args.opset,
        args.cache_dir,
        args.provider,
        args.calibration_dir,
        args.floors,
    )
    torch.set_grad_enabled(False)
    code = 0
    for architecture in args.architectures:
        name = f"{args.name}.onnx" if args.name else default_file_name(architecture, opts.precision)
        path = opts.out_dir / name
        if args.skip_existing and path.exists():
            print(f"skip {path}: exists")
            continue
        code = max(code, _run(architecture, path, opts))
    return code
