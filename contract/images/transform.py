"""torchvision's eval transform on a PIL image: ``Resize(resize_size)`` + ``CenterCrop(crop_size)``.

The exported model takes the crop *before* ``ToTensor``/``Normalize`` (those run inside the
ONNX graph, see ``docs/DESIGN.md``), so this module reproduces exactly what torchvision's PIL
path produces up to there, as uint8 ``(crop_size, crop_size, 3)`` RGB. It trusts its input
(an RGB image from :mod:`contract.images.decode`); the one size it checks is the resized
intermediate, which an extreme aspect ratio can make huge.

Only the pixels the crop keeps are resampled (see :func:`_resize_crop`), with Pillow's own
passes and coefficients, so the bytes are those of ``img.resize(size).crop(box)``;
``tests/unit/test_transform_exact.py`` holds that straightforward version as its reference
and compares byte for byte.
"""

from __future__ import annotations

import functools
import math
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from contract.errors import ImageTooLarge, InvalidImage
from contract.modelmeta import Preprocessing

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
    orientation: Image.Transpose | None = None,
) -> npt.NDArray[np.uint8]:
    """torchvision's ``Resize(spec.resize_size)`` + ``CenterCrop(spec.crop_size)`` on
    ``img.transpose(orientation)``: the upright image (its EXIF orientation applied).

    The bytes are those of transposing first, but the transpose runs on the crop; only
    where the orientation reverses the axis of Pillow's first pass are the lines that pass
    reads flipped before it (see :func:`_resize_crop`).

    Args:
        img: an RGB PIL image (as :func:`contract.images.decode.load_rgb` returns), as stored.
        spec: the model's preprocessing; ``spec.interpolation`` names the PIL filter
            (``bilinear`` is PIL's antialiased triangle filter, as torchvision's PIL path).
        max_resized_pixels: bound on the resized intermediate.
        out: where to write the crop (uint8 ``(crop, crop, 3)``, e.g. one row of a request's
            batch); None returns a new read-only array.
        orientation: the transpose that makes ``img`` upright (its EXIF orientation, see
            :func:`contract.images.decode.orientation`), None if it is upright.

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
    if img.width < 1 or img.height < 1:
        raise InvalidImage(f"image has zero size ({img.width}x{img.height})")
    swap = orientation in _SWAPS
    width, height = (img.height, img.width) if swap else img.size  # upright
    size = check_resized(width, height, spec.resize_size, max_resized_pixels)
    box = center_crop_box(size[0], size[1], spec.crop_size)
    shape = (spec.crop_size, spec.crop_size, 3)
    if out is not None and out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, the crop is {shape}")
    if size != (width, height) and filt in _SUPPORT and _pass_order() is not None:
        img = _resize_crop(img, orientation, size, box, filt)
    else:  # no resize, NEAREST (not Pillow's two-pass resampling), or an unknown Pillow
        if orientation is not None:
            img = img.transpose(orientation)
        if size != (width, height):
            img = img.resize(size, filt)
        if box != (0, 0, *size):
            img = img.crop(box)
    pixels = np.frombuffer(img.tobytes(), dtype=np.uint8).reshape(shape)
    if out is None:
        return pixels
    np.copyto(out, pixels)
    return out


# Filter support (source pixels at scale 1) of Pillow's two-pass filters (Resample.c).
_SUPPORT: Final[dict[Image.Resampling, float]] = {
    Image.Resampling.BOX: 0.5,
    Image.Resampling.BILINEAR: 1.0,
    Image.Resampling.HAMMING: 1.0,
    Image.Resampling.BICUBIC: 2.0,
    Image.Resampling.LANCZOS: 3.0,
}


#: The first pass is restricted to the lines the second reads only where the copy of those
#: lines is this small: past it, the fresh allocation of the copy costs more than the pass
#: saves (measured, thread CPU, whole preprocess of a JPEG: 1633x1225 11.1 ms either way,
#: 2309x1732 20.7 ms unrestricted against 35.9 ms restricted, 4000x3000 52.7 against 74.2).
_MAX_LINES_COPY_BYTES: Final = 4 << 20


# The upright image's axes (x, y) as (axis of the stored image, reversed?) per transpose.
_AXES: Final[dict[Image.Transpose | None, tuple[tuple[int, bool], tuple[int, bool]]]] = {
    None: ((0, False), (1, False)),
    Image.Transpose.FLIP_LEFT_RIGHT: ((0, True), (1, False)),
    Image.Transpose.FLIP_TOP_BOTTOM: ((0, False), (1, True)),
    Image.Transpose.ROTATE_180: ((0, True), (1, True)),
    Image.Transpose.TRANSPOSE: ((1, False), (0, False)),
    Image.Transpose.ROTATE_270: ((1, True), (0, False)),  # clockwise
    Image.Transpose.ROTATE_90: ((1, False), (0, True)),  # counter-clockwise
    Image.Transpose.TRANSVERSE: ((1, True), (0, True)),
}
_SWAPS: Final = frozenset(t for t, ((x_axis, _), _) in _AXES.items() if x_axis == 1)
_FLIP: Final = (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM)


def _resize_crop(
    img: Image.Image,
    orientation: Image.Transpose | None,
    size: tuple[int, int],
    box: tuple[int, int, int, int],
    filt: Image.Resampling,
) -> Image.Image:
    """``img.transpose(orientation).resize(size, filt).crop(box)``, byte for byte, resampling
    only what ``box`` keeps and transposing only what the arithmetic needs.

    Pillow resizes in two one-axis passes, each rounding to uint8, with coefficients that
    depend only on (input size, output size) along that pass's axis; Pillow 13 runs the
    vertical pass first when the height shrinks by more than twice the width does
    (:func:`_vertical_first`), older releases always the horizontal one. A horizontal and a
    vertical pass do the same arithmetic, so each pass of the upright image runs as Pillow's
    pass along the stored axis it maps to. In Pillow's order (of the upright image):

    1. the first pass, a one-axis ``resize``; on small images only over the source lines
       that the kept output of the second pass reads (a superset: one line of margin beyond
       the filter's reach); where the upright image reverses this pass's axis, those lines
       are flipped first (a pass's coefficients are not mirror-symmetric in floating point);
    2. the kept lines of its output (each line of a pass is independent of the others),
       flipped along the second pass's axis where that one is reversed, pasted back at their
       place into a zero canvas of the full extent where step 1 was restricted, so the second
       pass computes the very coefficients of the one-call resize;
    3. the second pass, one-axis; the crop of that (zero fill where ``box`` pads, as
       ``Image.crop``); and the transpose of that crop where the orientation swaps the axes.

    A ``box=`` argument to ``resize`` would avoid the canvas, but Pillow takes the box as
    float32 and recomputes each pixel centre from it, which moves the coefficients: not
    exact. ``tests/unit/test_transform_exact.py`` compares this with the one-call version.
    """
    axes = _AXES[orientation]
    upright = tuple(img.size[axes[u][0]] for u in (0, 1))
    f = 1 if _pass_order() and _vertical_first((upright[0], upright[1]), size) else 0
    s = 1 - f  # the upright axes of the first and the second pass
    (fa, f_rev), (sa, s_rev) = axes[f], axes[s]  # their stored axes, and whether reversed
    keep = ((max(box[0], 0), min(box[2], size[0])), (max(box[1], 0), min(box[3], size[1])))

    # upright source lines the second pass reads for its kept output: centre (i + 0.5) *
    # scale, reach support * max(scale, 1) either side (Resample.c precompute_coeffs)
    length = upright[s]
    scale = length / size[s]
    reach = _SUPPORT[filt] * max(scale, 1.0)
    k0, k1 = keep[s]  # never empty: the box is centred
    lo = max(0, math.floor((k0 + 0.5) * scale - reach) - 1)
    hi = min(length, math.ceil((k1 - 0.5) * scale + reach) + 2)
    restrict = (lo, hi) != (0, length) and (hi - lo) * upright[f] * 4 <= _MAX_LINES_COPY_BYTES

    part = img
    if restrict:
        stored = (length - hi, length - lo) if s_rev else (lo, hi)
        part = img.crop(_span(sa, *stored, img.size))
    if f_rev:
        part = part.transpose(_FLIP[fa])
    first = part.resize(_with(part.size, fa, size[f]), filt)
    a0, a1 = keep[f]
    kept = first.crop(_span(fa, a0, a1, first.size))
    if s_rev:
        kept = kept.transpose(_FLIP[sa])
    if restrict:
        canvas = Image.new("RGB", _with(kept.size, sa, length))
        canvas.paste(kept, (0, lo) if sa else (lo, 0))
    else:
        canvas = kept
    second = canvas.resize(_with(canvas.size, sa, size[s]), filt)
    span = {fa: (box[f] - a0, box[f + 2] - a0), sa: (box[s], box[s + 2])}
    out = second.crop((span[0][0], span[1][0], span[0][1], span[1][1]))
    return out.transpose(Image.Transpose.TRANSPOSE) if fa != f else out


def _span(axis: int, lo: int, hi: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The crop box of ``[lo, hi)`` along ``axis`` (0: x, 1: y), whole along the other."""
    return (lo, 0, hi, size[1]) if axis == 0 else (0, lo, size[0], hi)


def _with(size: tuple[int, int], axis: int, value: int) -> tuple[int, int]:
    """``size`` with its ``axis`` (0: width, 1: height) set to ``value``."""
    return (value, size[1]) if axis == 0 else (size[0], value)


@functools.cache
def _pass_order() -> bool | None:
    """How the installed Pillow orders its passes: False (always horizontal first, Pillow <
    13), True (vertical first where :func:`_vertical_first` says, Pillow 13), None (neither:
    :func:`_resize_crop` then takes the plain way). Found once, on two 6 KB noise images."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (100, 60, 3), dtype=np.uint8))
    seen = []
    for size in ((50, 40), (50, 90)):  # vertical first under Pillow 13's rule; horizontal
        one = noise.resize(size, Image.Resampling.BILINEAR).tobytes()
        h_first = noise.resize((size[0], 100), Image.Resampling.BILINEAR)
        v_first = noise.resize((60, size[1]), Image.Resampling.BILINEAR)
        h_one = h_first.resize(size, Image.Resampling.BILINEAR).tobytes() == one
        v_one = v_first.resize(size, Image.Resampling.BILINEAR).tobytes() == one
        seen.append("h" if h_one and not v_one else "v" if v_one and not h_one else "?")
    return {("h", "h"): False, ("v", "h"): True}.get((seen[0], seen[1]))


def _vertical_first(src: tuple[int, int], dst: tuple[int, int]) -> bool:
    """Pillow 13's pass order (python-pillow/Pillow#9549): vertical first when the height
    shrinks by more than twice as many pixels as the width. Inferred from Pillow 13.0.0's
    output (the C is not in the wheel) and pinned by a test over thousands of sizes."""
    (w, h), (new_w, new_h) = src, dst
    return new_h < h and h - new_h > 2 * (w - new_w)


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
