"""Real photographs at benchmark sizes, JPEG-encoded in memory.

The photos are scikit-image's bundled sample images (``skimage.data.astronaut``, ``chelsea``,
``coffee``: real photographs shipped inside the package, no download), resized with PIL's
Lanczos filter to each target size (aspect ratio changed to fit exactly) and encoded as
JPEG quality 90, 4:2:0 subsampling, as a phone or web upload would be.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

PHOTO_NAMES = ("astronaut", "chelsea", "coffee")
"""The load-test photos"""
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Photo:
    """One encoded photo: ``name`` of the skimage sample, ``size`` (width, height) in pixels."""

    name: str
    size: tuple[int, int]
    jpeg: bytes


@cache
def source(name: str) -> Image.Image:
    """The scikit-image sample ``name`` as an RGB image (``motorcycle``: the left view of
    ``stereo_motorcycle``; grey photos such as ``camera`` are replicated to three channels)."""
    from skimage import data  # imported lazily: slow import, only the bench needs it

    if name == "motorcycle":
        arr = np.asarray(getattr(data, "stereo_motorcycle")()[0])  # noqa: B009 (untyped)
    else:
        arr = np.asarray(getattr(data, name)())
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return Image.fromarray(arr[..., :3].astype(np.uint8)).convert("RGB")


def photo(name: str, size: tuple[int, int]) -> Photo:
    """The sample ``name`` resized to ``size`` = (width, height) and JPEG-encoded."""
    img = source(name).resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return Photo(name, size, buf.getvalue())


def photos(size: tuple[int, int]) -> list[Photo]:
    """All sample photos at ``size``."""
    return [photo(n, size) for n in PHOTO_NAMES]
