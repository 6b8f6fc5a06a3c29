"""torchvision's eval transform on a PIL image: ``Resize(resize_size)`` + ``CenterCrop(crop_size)``.

The exported model takes the crop *before* ``ToTensor``/``Normalize`` (those run inside the
ONNX graph, see ``docs/DESIGN.md``), so this module reproduces exactly what torchvision's PIL
path produces up to there, as uint8 ``(crop_size, crop_size, 3)`` RGB. It trusts its input
(an RGB image from :mod:`server.decode`); the one size it checks is the resized
intermediate, which an extreme aspect ratio can make huge.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from server.errors import ImageTooLarge, InvalidImage
from server.modelmeta import Preprocessing

__all__ = [
    "MAX_RESIZED_PIXELS",
    "center_crop_box",
    "check_resized",
    "resample",
    "resized_size",
    "transform",
]

#: Default bound on the resized intermediate (pixels); see :func:`check_resized`.
MAX_RESIZED_PIXELS: Final = 50_000_000

# torchvision's InterpolationMode values -> PIL filters (torchvision's pil_modes_mapping).
_RESAMPLE: Final[dict[str, Image.Resampling]] = {
    "nearest": Image.Resampling.NEAREST,
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Output ``(width, height)`` of torchvision's ``Resize(size)`` (an int) on a PIL image.

    The shorter side becomes ``size``; the longer becomes ``int(size * long / short)``
    (truncated, as torchvision's ``_compute_resized_output_size`` does).

    Raises:
        ValueError: a non-positive argument.
    """
    if width < 1 or height < 1 or size < 1:
        raise ValueError(f"sizes must be positive, got {width}x{height} -> {size}")
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def center_crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """PIL crop box ``(left, top, right, bottom)`` of torchvision's ``CenterCrop(crop)``.

    Offsets are ``int(round((side - crop) / 2.0))`` (Python's round: half to even). Where a
    side is shorter than ``crop``, torchvision first pads with zeros, ``(crop - side) // 2``
    before and the rest after, then crops at 0; that is a box starting at
    ``-((crop - side) // 2)``, and PIL's ``Image.crop`` fills outside the image with 0 too.

    Raises:
        ValueError: a non-positive argument.
    """
    if width < 1 or height < 1 or crop < 1:
        raise ValueError(f"sizes must be positive, got {width}x{height} -> crop {crop}")

    def offset(side: int) -> int:
        if crop > side:
            return -((crop - side) // 2)
        return round((side - crop) / 2.0)  # Python's round, as torchvision

    left, top = offset(width), offset(height)
    return left, top, left + crop, top + crop


def transform(
    img: Image.Image,
    spec: Preprocessing,
    max_resized_pixels: int = MAX_RESIZED_PIXELS,
    out: npt.NDArray[np.uint8] | None = None,
) -> npt.NDArray[np.uint8]:
    """torchvision's ``Resize(spec.resize_size)`` + ``CenterCrop(spec.crop_size)`` on ``img``.

    Args:
        img: an RGB PIL image (as :func:`server.decode.decode` returns).
        spec: the model's preprocessing; ``spec.interpolation`` names the PIL filter
            (``bilinear`` is PIL's antialiased triangle filter, as torchvision's PIL path).
        max_resized_pixels: bound on the resized intermediate.
        out: where to write the crop (uint8 ``(crop, crop, 3)``, e.g. one row of a request's
            batch); None returns a new read-only array.

    Returns:
        ``uint8`` array of shape ``(crop_size, crop_size, 3)``, RGB, C-contiguous: ``out``, or
        a read-only view of the crop's bytes (the one copy out of Pillow).

    Raises:
        ImageTooLarge: the resized intermediate exceeds ``max_resized_pixels``.
        ValueError: ``img`` is not RGB, ``out`` has the wrong shape, or ``spec`` has a
            non-positive size or an unknown interpolation (a configuration error, not a
            client error).
    """
    if img.mode != "RGB":
        raise ValueError(f"transform needs an RGB image, got mode {img.mode!r}")
    filt = resample(spec)
    width, height = img.size
    if width < 1 or height < 1:
        raise InvalidImage(f"image has zero size ({width}x{height})")
    size = check_resized(width, height, spec.resize_size, max_resized_pixels)
    if size != img.size:
        img = img.resize(size, filt)
    box = center_crop_box(size[0], size[1], spec.crop_size)
    if box != (0, 0, size[0], size[1]):
        img = img.crop(box)
    shape = (spec.crop_size, spec.crop_size, 3)
    pixels = np.frombuffer(img.tobytes(), dtype=np.uint8).reshape(shape)
    if out is None:
        return pixels
    if out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, the crop is {shape}")
    np.copyto(out, pixels)
    return out


def resample(spec: Preprocessing) -> Image.Resampling:
    """The PIL filter of ``spec.interpolation``; ValueError for an unknown one or bad sizes."""
    try:
        filt = _RESAMPLE[spec.interpolation.lower()]
    except KeyError:
        raise ValueError(
            f"unknown interpolation {spec.interpolation!r}; expected one of {sorted(_RESAMPLE)}"
        ) from None
    if spec.resize_size < 1 or spec.crop_size < 1:
        raise ValueError(f"resize_size and crop_size must be positive, got {spec}")
    return filt


def check_resized(
    width: int, height: int, size: int, max_pixels: int = MAX_RESIZED_PIXELS
) -> tuple[int, int]:
    """The resized size; ImageTooLarge if it exceeds ``max_pixels`` (extreme aspect ratios:
    a 1x65535 image would be resized to 256 x 16,776,960)."""
    new_w, new_h = resized_size(width, height, size)
    if new_w * new_h > max_pixels:
        raise ImageTooLarge(
            f"image aspect ratio is too extreme: {width}x{height} would be resized to "
            f"{new_w}x{new_h} ({new_w * new_h} pixels, limit {max_pixels})"
        )
    return new_w, new_h
