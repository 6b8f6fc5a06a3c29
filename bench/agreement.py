"""Speed beside agreement: how closely a variant's logits follow fp32 on real photos.

Measured in the run itself: scikit-image's bundled photographs that the INT8 calibration
does not use (``chelsea``, ``coffee``, ``rocket``, ``camera``, ``motorcycle``), each in seven
views (whole, four corner crops of 3/4 size, the centre half, the mirror image), encoded as
PNG and prepared by the server's own preprocessing; every variant runs the same crops, and
its logits are compared with those of the fp32 file on ONNX Runtime's CPU provider. The
comparison is ``server.agreement.compare`` where the server has it, else the same four
measures computed here. The figures the export step recorded in the file's metadata
(``agreement``) are read alongside, when present.
"""

from __future__ import annotations

import importlib
import io
import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from server.modelmeta import Preprocessing
from server.onnxfile import read_metadata_props
from server.preprocess import preprocess

from .images import source

#: Held out from the INT8 calibration photos (export/calibration.py: astronaut, brick, cell,
#: clock_motion, coins, grass, gravel, hubble_deep_field, ihc, retina).
PHOTOS = ("chelsea", "coffee", "rocket", "camera", "motorcycle")
TOP_K = 5


@dataclass(frozen=True)
class Agreement:
    """A variant's logits against the reference's on ``inputs`` crops.

    ``top1``: fraction of crops with the same top-1 class (0..1); ``top5_overlap``: mean of
    ``|top5 & top5_ref| / 5``; ``softmax_l1_max`` / ``_mean``: L1 distance between the two
    softmax distributions (0..2), worst and mean crop; ``max_rel_logit_error``: largest over
    crops of ``max |z - z_ref| / max |z_ref|``.
    """

    inputs: int
    top1: float
    top5_overlap: float
    softmax_l1_max: float
    softmax_l1_mean: float
    max_rel_logit_error: float
    source: str = "bench.agreement"
    """what computed it (``bench.agreement``, ``server.agreement.compare``), or where recorded
    figures came from"""


def views(img: Image.Image) -> list[Image.Image]:
    """Seven views of ``img``: whole, four 3/4 corner crops, the centre half, the mirror."""
    w, h = img.size
    cw, ch = 3 * w // 4, 3 * h // 4
    boxes = [(0, 0, w, h), (0, 0, cw, ch), (w - cw, 0, w, ch), (0, h - ch, cw, h),
             (w - cw, h - ch, w, h), (w // 4, h // 4, w // 4 + w // 2, h // 4 + h // 2)]  # fmt: skip
    return [img.crop(b) for b in boxes] + [img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]


@cache
def _encoded() -> tuple[bytes, ...]:
    out = []
    for name in PHOTOS:
        for view in views(source(name)):
            buf = io.BytesIO()
            view.save(buf, format="PNG")
            out.append(buf.getvalue())
    return tuple(out)


def inputs(spec: Preprocessing) -> npt.NDArray[np.uint8]:
    """The agreement crops, uint8 ``[35, crop, crop, 3]``, by the server's preprocessing."""
    return np.stack([preprocess(data, spec) for data in _encoded()])


def _softmax(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: npt.NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    return out


def _compare_here(reference: np.ndarray, logits: np.ndarray) -> Agreement:
    ref, got = reference.astype(np.float64), logits.astype(np.float64)
    top_ref = np.argsort(-ref, axis=1, kind="stable")[:, :TOP_K]
    top_got = np.argsort(-got, axis=1, kind="stable")[:, :TOP_K]
    overlap = [len(set(a) & set(b)) / TOP_K for a, b in zip(top_ref, top_got, strict=True)]
    l1 = np.abs(_softmax(got) - _softmax(ref)).sum(axis=1)
    scale = np.maximum(np.abs(ref).max(axis=1), np.finfo(np.float64).tiny)
    rel = np.abs(got - ref).max(axis=1) / scale
    return Agreement(len(ref), float((top_ref[:, 0] == top_got[:, 0]).mean()),
                     float(np.mean(overlap)), float(l1.max()), float(l1.mean()),
                     float(rel.max()))  # fmt: skip


def compare(reference: np.ndarray, logits: np.ndarray) -> Agreement:
    """``logits`` against ``reference`` (float ``[N, classes]``, same crops, same order):
    ``server.agreement.compare`` when this server has it, else the same measures here."""
    try:
        server_agreement: Any = importlib.import_module("server.agreement")
    except ImportError:
        return _compare_here(reference, logits)
    a = server_agreement.compare(reference, logits)
    return Agreement(int(a.photos), float(a.top1), float(a.top5_overlap),
                     float(a.softmax_l1_max), float(a.softmax_l1_mean),
                     float(a.max_rel_logit_error), "server.agreement.compare")  # fmt: skip


def weights_of(path: Path) -> str:
    """The file's ``weights_sha256``: two files compare only if they share their weights."""
    return read_metadata_props(path).get("weights_sha256", "")


def recorded(path: Path, provider: str) -> Agreement | None:
    """The agreement the export step recorded in ``path``'s metadata (``agreement``) for
    ``provider`` (else its first measurement); None when the file records none."""
    raw = read_metadata_props(path).get("agreement")
    if not raw:
        return None
    try:
        record = json.loads(raw)
        found = record["measurements"]
        m = next((x for x in found if x.get("provider") == provider), found[0])
        a = m["agreement"]
        return Agreement(int(a["photos"]), float(a["top1"]), float(a["top5_overlap"]),
                         float(a["softmax_l1_max"]), float(a.get("softmax_l1_mean", math.nan)),
                         float(a["max_rel_logit_error"]),
                         f"recorded at export on {m.get('provider', '?')} "
                         f"({m.get('runtime', '?')}), vs {record.get('reference', 'fp32')}")  # fmt: skip
    except (ValueError, KeyError, TypeError, IndexError, StopIteration):
        return None
