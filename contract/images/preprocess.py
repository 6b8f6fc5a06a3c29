"""Image bytes -> the model's input crop: :mod:`contract.images.decode`, then :mod:`contract.images.transform`.

``preprocess(data, spec)`` equals torchvision's
``Resize(resize_size) -> CenterCrop(crop_size)`` on ``Image.open(f).convert("RGB")`` (the
``ToTensor`` + ``Normalize`` half runs inside the ONNX graph), with hostile input refused by
the decoder before any pixel is decoded.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from contract.errors import InvalidImage
from contract.images.decode import DecodeLimits, load_rgb, open_image, orientation
from contract.images.transform import check_resized, resample, transform
from contract.modelmeta import Preprocessing

__all__ = ["DecodeLimits", "preprocess"]

_DEFAULT_LIMITS = DecodeLimits()


def preprocess(
    data: bytes,
    spec: Preprocessing,
    limits: DecodeLimits = _DEFAULT_LIMITS,
    out: npt.NDArray[np.uint8] | None = None,
) -> npt.NDArray[np.uint8]:
    """Image bytes -> model input crop, written into ``out`` if given.

    Both size limits are checked on the header before any pixel is decoded. With
    ``limits.fast_jpeg``, JPEGs whose shorter side is at least ``4 * spec.resize_size`` are
    decoded at a reduced DCT scale (1/2, 1/4 or 1/8) that keeps the shorter side at least
    ``2 * spec.resize_size``, then resized as usual.

    Returns:
        ``uint8`` array of shape ``(crop_size, crop_size, 3)``, RGB, C-contiguous (``out``,
        or a new read-only array).

    Raises:
        InvalidImage, UnsupportedImageFormat, ImageTooLarge: as :func:`contract.images.decode.decode`
            and :func:`contract.images.transform.transform`.
        ValueError: ``spec`` (or ``out``) is invalid: a configuration error.
    """
    resample(spec)  # a bad spec is a configuration error: fail before touching the bytes
    img = open_image(data, limits)
    check_resized(img.width, img.height, spec.resize_size, limits.max_resized_pixels)
    if limits.fast_jpeg and img.format in ("JPEG", "MPO"):
        target = 2 * spec.resize_size
        if min(img.size) >= 2 * target:  # below that the draft scale would be 1 anyway
            try:
                img.draft("RGB", (target, target))
            except Exception as e:  # pragma: no cover - draft only rewrites the tile
                raise InvalidImage(f"cannot decode JPEG image: {e}") from None
    # An RGB image stays as stored: transform applies the EXIF orientation to what it keeps
    # (no full-size copy where the first pass's axis is not reversed). Any other mode is
    # rotated in its own mode before its RGB conversion (a 1-byte copy for L or P).
    upright = img.mode != "RGB"
    rgb = load_rgb(img, upright=upright)
    method = None if upright else orientation(img)
    del img  # the image as decoded, when rgb is a converted copy: not kept
    return transform(rgb, spec, limits.max_resized_pixels, out, method)
