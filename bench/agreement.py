"""Speed beside agreement: how closely a variant's logits follow fp32 on real photos.

Measured in the run itself: scikit-image's bundled photographs that the INT8 calibration
does not use (``chelsea``, ``coffee``, ``rocket``, ``camera``, ``motorcycle``), each in seven
views (whole, four corner crops of 3/4 size, the centre half, the mirror image), encoded as
PNG and prepared by the server's own preprocessing; every variant runs the same crops, and
its logits are compared with those of the fp32 file on ONNX Runtime's CPU provider by the
server's own measure (``contract.agreement.compare``). Beside them: what the export step
recorded in the file (metadata ``agreement``) and what the server measured at load on its
verification photos (``GET /models``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from contract.agreement import Agreement, compare
from contract.images.preprocess import preprocess
from contract.modelmeta import ModelMetadata, Preprocessing

from .images import source

__all__ = ["PHOTOS", "Agreement", "Sourced", "at_load", "compare", "inputs", "recorded"]

#: Held out from the INT8 calibration photos (export/calibration.py: astronaut, brick, cell,
#: clock_motion, coins, grass, gravel, hubble_deep_field, ihc, retina).
PHOTOS = ("chelsea", "coffee", "rocket", "camera", "motorcycle")


@dataclass(frozen=True)
class Sourced:
    """Agreement figures and where they were measured."""

    agreement: Agreement
    source: str


def views(img: Image.Image) -> list[Image.Image]:
    """Seven views of ``img``: whole, four 3/4 corner crops, the centre half, the mirror."""
    w, h = img.size
    cw, ch = 3 * w // 4, 3 * h // 4
    boxes = [
        (0, 0, w, h),
        (0, 0, cw, ch),
        (w - cw, 0, w, ch),
        (0, h - ch, cw, h),
        (w - cw, h - ch, w, h),
        (w // 4, h // 4, w // 4 + w // 2, h // 4 + h // 2),
    ]
    return [img.crop(b) for b in boxes] + [img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]


@cache
def _encoded(per_photo: int) -> tuple[bytes, ...]:
    out = []
    for name in PHOTOS:
        for view in views(source(name))[:per_photo]:
            buf = io.BytesIO()
            view.save(buf, format="PNG", compress_level=1)  # lossless; size does not matter
            out.append(buf.getvalue())
    return tuple(out)


def inputs(spec: Preprocessing, per_photo: int = 7) -> npt.NDArray[np.uint8]:
    """The agreement crops, uint8 ``[len(PHOTOS) * per_photo, crop, crop, 3]`` (the first
    ``per_photo`` of the seven views of each photo), by the server's preprocessing."""
    return np.stack([preprocess(data, spec) for data in _encoded(per_photo)])


def recorded(meta: ModelMetadata, provider: str) -> Sourced | None:
    """What the export step recorded in the file for ``provider`` (else its first
    measurement); None when the file records nothing."""
    record = meta.agreement
    if record is None or not record.measurements:
        return None
    found = [m for m in record.measurements if m.provider == provider] or [record.measurements[0]]
    m = found[0]
    return Sourced(
        m.agreement,
        f"at export on {m.provider} ({m.runtime}), against the float64 "
        "reference on the verification photos",
    )


def at_load(info: dict[str, Any]) -> Sourced | None:
    """What the server measured at load (its ``GET /models`` entry ``info``), if it did."""
    check = (info.get("agreement") or {}).get("at_load")
    if not check:
        return None
    try:
        return Sourced(Agreement.from_dict(check["values"]), str(check.get("measured_on", "")))
    except (KeyError, TypeError, ValueError):
        return None
