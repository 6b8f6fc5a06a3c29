"""Check a written artifact against the PyTorch model it came from.

Every export runs this; the CLI fails (exit 1) when a check is out of bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from numpy.typing import NDArray
from torch import nn

from export.onnx_export import INPUT_NAME, count_ops

FP32_MAX_ABS_DIFF = 1e-4
# float16 has ~3 decimal digits: bound the logit error relative to the largest |logit|.
FP16_MAX_REL_DIFF = 1e-2
FP16_MIN_TOP1_AGREEMENT = 0.75


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Report:
    """Outcome of all checks for one file, printable as a short report."""

    path: Path
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks)

    def add(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append(Check(name, passed, detail))

    def format(self) -> str:
        lines = [f"verify {self.path}: {'OK' if self.ok else 'FAILED'}"]
        lines += [f"  [{'ok' if c.passed else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


def random_images(batch: int, size: int, seed: int) -> NDArray[np.uint8]:
    """Seeded random uint8 images ``[batch, size, size, 3]``."""
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def _top1_mismatches(ref: NDArray[np.float32], got: NDArray[np.float32], tie: float) -> int:
    # A row whose two best reference logits are closer than `tie` has no well-defined top-1.
    top2 = np.sort(ref, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > tie
    return int(((ref.argmax(1) != got.argmax(1)) & decided).sum())


def _compare_fp32(report: Report, ref: NDArray[np.float32], got: NDArray[np.float32]) -> None:
    diff = float(np.abs(ref - got).max())
    report.add(
        "max |ort - torch|",
        diff <= FP32_MAX_ABS_DIFF,
        f"{diff:.2e} (bound {FP32_MAX_ABS_DIFF:.0e})",
    )
    bad = _top1_mismatches(ref, got, 2 * FP32_MAX_ABS_DIFF)
    report.add("top-1 identical", bad == 0, f"{len(ref) - bad}/{len(ref)} rows")


def _compare_fp16(report: Report, ref: NDArray[np.float32], got: NDArray[np.float32]) -> None:
    rel = float(np.abs(ref - got).max() / max(float(np.abs(ref).max()), 1e-12))
    report.add(
        "max |ort16 - torch32| / max |logit|",
        rel <= FP16_MAX_REL_DIFF,
        f"{rel:.2e} (bound {FP16_MAX_REL_DIFF:.0e})",
    )
    agree = float((ref.argmax(1) == got.argmax(1)).mean())
    report.add(
        "top-1 agreement",
        agree >= FP16_MIN_TOP1_AGREEMENT,
        f"{agree:.0%} (bound {FP16_MIN_TOP1_AGREEMENT:.0%})",
    )


def verify(
    path: Path,
    reference: nn.Module,
    *,
    precision: str,
    crop_size: int = 224,
    batch_sizes: tuple[int, ...] = (1, 4),
    seed: int = 0,
) -> Report:
    """Run the file in ONNX Runtime (CPU) and ``reference`` (unfused, eval, uint8 NHWC input).

    ``reference`` maps uint8 ``[N, H, W, 3]`` to float32 logits. Checks: onnx.checker, zero
    BatchNormalization nodes, logits on one seeded batch per size in ``batch_sizes``.
    """
    report = Report(path)
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
        report.add("onnx.checker", True, "passed")
    except onnx.checker.ValidationError as e:
        report.add("onnx.checker", False, str(e).splitlines()[0])
    bn = count_ops(model, "BatchNormalization")
    report.add("BatchNormalization nodes", bn == 0, str(bn))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    refs, gots = [], []
    for i, batch in enumerate(batch_sizes):
        images = random_images(batch, crop_size, seed + i)
        with torch.no_grad():
            refs.append(reference.eval()(torch.from_numpy(images)).numpy())
        gots.append(session.run(None, {INPUT_NAME: images})[0])
    ref, got = np.concatenate(refs), np.concatenate(gots)
    report.add(
        "output",
        got.shape == ref.shape and got.dtype == np.float32,
        f"{got.dtype} {list(got.shape)} over batches {list(batch_sizes)}",
    )
    (_compare_fp16 if precision == "fp16" else _compare_fp32)(report, ref, got)
    return report
