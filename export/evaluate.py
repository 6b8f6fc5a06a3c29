"""Top-1/top-5 accuracy of every served variant on a labelled ImageNet-style folder.

``python -m export.evaluate --data DIR [--labels FILE] [--model-dir models] [--models a,b]
[--provider auto|cpu|openvino|cuda] [--limit N]``

``DIR`` is either ImageNet's layout (one sub-folder per class, named by its WordNet id, e.g.
``n01440764/*.JPEG``), or any folder plus ``--labels FILE`` whose lines are
``<path relative to DIR> <WordNet id or 0-based class index>``. Every model file is run on the
engines that serve it (the server's preprocessing, its own metadata): fp32 files, fp16/int8
files, and the bf16 variant of fp32 files where ``--provider openvino`` runs on a CPU with bf16
units. The drop is against the fp32 file with the same weights. Needs no torch.
With torchvision's ImageNet weights on the 50,000 ImageNet validation images, the fp32 rows
reproduce 69.758 / 89.078 (ResNet18) and 76.130 / 92.862 (ResNet50).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from contract.cpuinfo import read_cpuinfo
from contract.errors import ImageTooLarge, InvalidImage, UnsupportedImageFormat
from contract.images.preprocess import preprocess
from contract.modelmeta import Preprocessing
from contract.scores import top_k_indices
from export.calibration import IMAGE_SUFFIXES
from export.labels import imagenet_synsets
from server.models.engines import (
    Engine,
    EngineOptions,
    EngineUnavailable,
    auto_provider,
    open_engine,
)

BATCH = 32


class DatasetError(ValueError):
    """The folder or labels file cannot be read as a labelled set; the message says why."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class Result:
    """Accuracy of one variant: ``top1``/``top5`` in percent over ``images``."""

    model: str
    variant: str  # the precision the engine executes: fp32, bf16, fp16, int8
    provider: str
    weights_sha256: str
    images: int
    top1: float
    top5: float


def _label(token: str, index: dict[str, int], where: str) -> int:
    if token in index:
        return index[token]
    if token.isdigit() and int(token) < len(index):
        return int(token)
    raise DatasetError(f"{where}: {token!r} is neither an ImageNet WordNet id nor a class index")


def folder_samples(directory: Path) -> list[Sample]:
    """``DIR/<wnid>/<image>``; raises ``DatasetError`` for an unknown sub-folder name."""
    index = {wnid: i for i, wnid in enumerate(imagenet_synsets())}
    out = []
    for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
        label = _label(sub.name, index, f"class folder {sub}")
        out += [
            Sample(p, label) for p in sorted(sub.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES
        ]
    return out


def labels_file_samples(directory: Path, labels: Path) -> list[Sample]:
    """Lines ``<relative path> <wnid or index>``; blank lines and ``#`` comments skipped."""
    index = {wnid: i for i, wnid in enumerate(imagenet_synsets())}
    out = []
    for n, line in enumerate(labels.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DatasetError(f"{labels}:{n}: expected '<path> <label>', got {line!r}")
        out.append(Sample(directory / parts[0], _label(parts[1], index, f"{labels}:{n}")))
    return out


def load_dataset(directory: Path, labels: Path | None, limit: int | None) -> list[Sample]:
    """Raises ``DatasetError`` when the folder is missing or holds no labelled image."""
    if not directory.is_dir():
        raise DatasetError(f"--data {directory} is not a folder")
    samples = labels_file_samples(directory, labels) if labels else folder_samples(directory)
    if not samples:
        raise DatasetError(
            f"no labelled images in {directory}: expected WordNet-id sub-folders "
            "(n01440764/...) or --labels FILE"
        )
    return samples[:limit]


def _batches(
    samples: list[Sample], spec: Preprocessing, skipped: list[str]
) -> Iterator[tuple[NDArray[np.uint8], NDArray[np.int64]]]:
    images, labels = [], []
    for s in samples:
        try:
            images.append(preprocess(s.path.read_bytes(), spec))
            labels.append(s.label)
        except (OSError, InvalidImage, UnsupportedImageFormat, ImageTooLarge) as e:
            skipped.append(f"{s.path}: {e}")
        if len(images) == BATCH:
            yield np.stack(images), np.array(labels)
            images, labels = [], []
    if images:
        yield np.stack(images), np.array(labels)


def accuracy(engine: Engine, samples: list[Sample], skipped: list[str]) -> tuple[int, float, float]:
    """(images, top-1 %, top-5 %) of ``engine`` on ``samples``; unreadable images skipped."""
    n = hit1 = hit5 = 0
    for images, labels in _batches(samples, engine.meta.preprocessing, skipped):
        top5 = top_k_indices(engine.run(0, images), 5)
        hit1 += int((top5[:, 0] == labels).sum())
        hit5 += int((top5 == labels[:, None]).any(axis=1).sum())
        n += len(labels)
    return n, 100.0 * hit1 / max(n, 1), 100.0 * hit5 / max(n, 1)


def variants(path: Path, provider: str) -> Iterator[Engine | str]:
    """The engines that serve ``path`` on ``provider``: the file's own precision, then bf16
    for an fp32 file on OpenVINO. A variant that cannot run here is a message instead."""
    cpu = read_cpuinfo()
    threads = len(os.sched_getaffinity(0))
    try:
        engine = open_engine(path, EngineOptions(provider, None, threads), cpu)
    except EngineUnavailable as e:
        yield f"{path.stem}: not evaluated: {e}"
        return
    yield engine
    if provider != "openvino" or engine.meta.precision != "fp32":
        return
    try:
        yield open_engine(path, EngineOptions(provider, "bf16", threads), cpu)
    except EngineUnavailable as e:
        yield f"{path.stem} bf16: not evaluated: {e}"


def evaluate(
    model_files: list[Path], samples: list[Sample], provider: str
) -> tuple[list[Result], list[str]]:
    """Every variant of every file; returns results and messages (skips, unavailable)."""
    results, notes, skipped = [], [], list[str]()
    for path in model_files:
        for engine in variants(path, provider):
            if isinstance(engine, str):
                notes.append(engine)
                continue
            n, top1, top5 = accuracy(engine, samples, skipped)
            r = engine.report
            results.append(
                Result(
                    path.stem, r.precision, r.provider, engine.meta.weights_sha256, n, top1, top5
                )
            )
    notes += sorted(set(skipped))
    return results, notes


def format_table(results: list[Result]) -> str:
    """One row per variant; the drop is against the fp32 variant with the same weights."""
    fp32 = {r.weights_sha256: r for r in results if r.variant == "fp32"}
    lines = [
        f"{'model':<20} {'variant':<8} {'provider':<9} {'images':>7} {'top-1 %':>8} "
        f"{'top-5 %':>8} {'drop top-1':>10} {'drop top-5':>10}"
    ]
    for r in results:
        base = fp32.get(r.weights_sha256)
        d1 = f"{base.top1 - r.top1:+.3f}" if base else "n/a"
        d5 = f"{base.top5 - r.top5:+.3f}" if base else "n/a"
        lines.append(
            f"{r.model:<20} {r.variant:<8} {r.provider:<9} {r.images:>7} {r.top1:>8.3f} "
            f"{r.top5:>8.3f} {d1:>10} {d5:>10}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.evaluate", description=__doc__)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--labels", type=Path)
    p.add_argument("--model-dir", type=Path, default=Path("models"))
    p.add_argument("--models", help="comma-separated model names (default: every .onnx file)")
    p.add_argument("--provider", choices=["auto", "cpu", "openvino", "cuda"], default="auto")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    args = p.parse_args(argv)
    provider = auto_provider() if args.provider == "auto" else args.provider
    names = args.models.split(",") if args.models else None
    files = sorted(args.model_dir.glob("*.onnx"))
    files = [f for f in files if names is None or f.stem in names]
    try:
        samples = load_dataset(args.data, args.labels, args.limit)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not files:
        print(
            f"error: no model files in {args.model_dir} (export them: make models)", file=sys.stderr
        )
        return 2
    results, notes = evaluate(files, samples, provider)
    print(format_table(results))
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
