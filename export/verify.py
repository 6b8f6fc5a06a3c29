"""Check a written artifact, on the engines that will serve it, against a float64 reference.

Every export runs this; the CLI publishes a file only when every gating check passes.

The reference is the *unfused* PyTorch model in float64, normalising on its own
(``export/reference.py``), on the verification photos (``contract/photos.py``) and a little
seeded noise. An fp32 file must be about as accurate as PyTorch itself in float32::

    max |file - float64| <= FP32_ERROR_MULTIPLE * max |torch float32 - float64|
                            + FP32_ERROR_FLOOR * max |float64 logit|

A reduced-precision file (fp16, INT8) is judged on the photos by the agreement measures of
``contract/agreement.py`` against floors. docs/EXPORT.md gives the measurements behind both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from numpy.typing import NDArray
from torch import nn

from contract.agreement import Agreement, Floors, Measurement, compare, violations
from contract.cpuinfo import CpuInfo
from contract.modelmeta import Preprocessing
from contract.photos import Photo, photo_batch, verification_photos
from export import reference
from export.onnx_export import count_ops
from server.models.engines import Engine, EngineOptions, EngineUnavailable, open_engine

#: fp32 files may be this many times less accurate than PyTorch float32 (measured: 0.5-1.7x
#: on ONNX Runtime CPU and OpenVINO here; other CPUs' kernels sum in other orders).
FP32_ERROR_MULTIPLE = 8.0
#: ... plus this fraction of the largest |logit| (about 8 float32 ulps), so that a model whose
#: PyTorch float32 error happens to be ~0 is not held to 0.
FP32_ERROR_FLOOR = 2.0**-20
NOISE_ROWS = 2


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str
    gating: bool = True


@dataclass
class Report:
    """Outcome of all checks for one file, printable as a short report.

    ``measurements``: agreement per engine (reduced precisions), serving provider first.
    """

    path: Path
    checks: list[Check] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks if c.gating)

    def add(self, name: str, passed: bool, detail: str, gating: bool = True) -> None:
        self.checks.append(Check(name, passed, detail, gating))

    def format(self) -> str:
        def mark(c: Check) -> str:
            return ("ok" if c.passed else "FAIL") if c.gating else "info"

        lines = [f"verify {self.path}: {'OK' if self.ok else 'FAILED'}"]
        lines += [f"  [{mark(c)}] {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


def random_images(batch: int, size: int, seed: int) -> NDArray[np.uint8]:
    """Seeded random uint8 images ``[batch, size, size, 3]``."""
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


@dataclass(frozen=True, eq=False)
class VerificationData:
    """Inputs and reference outputs, computed once per model.

    ``images``: uint8 ``[P + NOISE_ROWS, crop, crop, 3]``, the ``P`` verification photos as
    the server preprocesses them, then seeded noise. ``reference``: float64 logits of the
    unfused float64 model; ``torch32``: of the same model in float32 (both ``[rows, C]``).
    """

    photos: list[Photo]
    images: NDArray[np.uint8]
    reference: NDArray[np.float64]
    torch32: NDArray[np.float64]

    @property
    def photo_rows(self) -> slice:
        return slice(0, len(self.photos))

    @property
    def torch_error(self) -> float:
        """max |PyTorch float32 - float64| over all rows."""
        return float(np.abs(self.torch32 - self.reference).max())

    @property
    def fp32_bound(self) -> float:
        return FP32_ERROR_MULTIPLE * self.torch_error + FP32_ERROR_FLOOR * float(
            np.abs(self.reference).max()
        )


def verification_data(model: nn.Module, spec: Preprocessing, seed: int = 0) -> VerificationData:
    """Run the unfused eval ``model`` in float64 and float32 on photos and noise."""
    photos = verification_photos()
    images = np.concatenate(
        [photo_batch(photos, spec), random_images(NOISE_ROWS, spec.crop_size, seed)]
    )
    ref = reference.logits(model, images, spec, torch.float64)
    f32 = reference.logits(model, images, spec, torch.float32)
    return VerificationData(photos, images, ref, f32)


@dataclass(frozen=True)
class Target:
    """What a file is checked against and where: ``providers`` (the serving one first),
    the agreement ``floors`` of its precision, this machine's ``cpu``."""

    data: VerificationData
    providers: list[str]
    floors: Floors
    cpu: CpuInfo


def _run_engine(
    engine: Engine, images: NDArray[np.uint8], photos: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """All rows (photos as one batch, noise as another) and photo 0 alone (batch 1)."""
    batches = [engine.run(0, images[:photos]), engine.run(0, images[photos:])]
    single = np.asarray(engine.run(0, images[:1]), dtype=np.float64)
    return np.concatenate(batches).astype(np.float64), single


def _check_graph(report: Report, path: Path, precision: str) -> None:
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
        report.add("onnx.checker", True, "passed")
    except onnx.checker.ValidationError as e:
        report.add("onnx.checker", False, str(e).splitlines()[0])
    bn = count_ops(model, "BatchNormalization")
    report.add("BatchNormalization nodes", bn == 0, str(bn))
    if precision == "int8":
        quantized = count_ops(model, "QuantizeLinear")
        report.add("QuantizeLinear nodes", quantized > 0, str(quantized))


def _top1_mismatches(ref: NDArray[np.float64], got: NDArray[np.float64], tie: float) -> int:
    # A row whose two best reference logits are closer than `tie` has no well-defined top-1.
    top2 = np.sort(ref, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > tie
    return int(((ref.argmax(1) != got.argmax(1)) & decided).sum())


def _describe(a: Agreement) -> str:
    return (
        f"top-1 {a.top1_count}, top-5 overlap {a.top5_overlap:.3f}, "
        f"softmax L1 max {a.softmax_l1_max:.2e} mean {a.softmax_l1_mean:.2e}, max |prob diff| "
        f"{a.max_probability_diff:.2e}, max rel logit error {a.max_rel_logit_error:.2e}"
    )


def _check_fp32(
    report: Report, label: str, data: VerificationData, got: NDArray[np.float64]
) -> None:
    err = float(np.abs(got - data.reference).max())
    bound = data.fp32_bound
    report.add(
        f"{label}: max |file - float64 torch|",
        err <= bound,
        f"{err:.2e} (bound {bound:.2e} = {FP32_ERROR_MULTIPLE:g} x PyTorch float32's own "
        f"error {data.torch_error:.2e} + {FP32_ERROR_FLOOR:.1e} x max |logit| "
        f"{np.abs(data.reference).max():.1f})",
    )
    bad = _top1_mismatches(data.reference, got, 2 * bound)
    report.add(f"{label}: top-1 identical", bad == 0, f"{len(got) - bad}/{len(got)} rows")
    rows = data.photo_rows
    report.add(f"{label}: photos", True, _describe(compare(data.reference[rows], got[rows])), False)


def _check_reduced(
    report: Report,
    label: str,
    data: VerificationData,
    got: NDArray[np.float64],
    floors: Floors,
    gating: bool,
) -> Agreement:
    rows = data.photo_rows
    agreement = compare(data.reference[rows], got[rows])
    missed = violations(agreement, floors)
    detail = _describe(agreement) + (f"; BELOW FLOORS: {'; '.join(missed)}" if missed else "")
    report.add(f"{label}: agreement on {agreement.photos} photos", not missed, detail, gating)
    return agreement


def verify(path: Path, target: Target, precision: str) -> Report:
    """Check ``path`` on each of ``target.providers`` (the serving one first).

    fp32: the error bound against the float64 reference on every provider. fp16/int8:
    agreement on the photos against ``target.floors``, gating on the serving provider only
    (the others are measured and reported). The measurements go to ``report.measurements``.
    """
    report = Report(path)
    _check_graph(report, path, precision)
    data, floors, cpu = target.data, target.floors, target.cpu
    threads = len(os.sched_getaffinity(0))
    for i, provider in enumerate(target.providers):
        gating = i == 0 or precision == "fp32"
        try:
            engine = open_engine(path, EngineOptions(provider=provider, threads=threads), cpu)
        except EngineUnavailable as e:
            report.add(f"{provider}: engine", False, str(e), gating)
            continue
        if engine.report.fallback:  # e.g. CUDA asked, the session silently got the CPU
            report.add(f"{provider}: engine", False, engine.report.fallback_reason, gating)
            continue
        got, single = _run_engine(engine, data.images, len(data.photos))
        label = f"{provider} ({engine.report.runtime}, {engine.report.precision})"
        scale = float(np.abs(data.reference).max())
        tolerance = data.fp32_bound if precision == "fp32" else floors.max_rel_logit_error * scale
        gap = float(np.abs(single[0] - got[0]).max())
        report.add(
            f"{label}: batch 1 = row of batch {len(data.photos)}",
            got.shape == data.reference.shape and gap <= tolerance,
            f"max diff {gap:.2e}, output {list(got.shape)}",
            gating,
        )
        if precision == "fp32":
            _check_fp32(report, label, data, got)
            continue
        agreement = _check_reduced(report, label, data, got, floors, gating)
        report.measurements.append(
            Measurement(
                engine.report.provider,
                engine.report.runtime,
                engine.report.precision,
                cpu.describe(),
                agreement,
            )
        )
    return report
