"""Image bytes -> the uint8 HWC centre crop that torchvision's eval transform produces.

The exported model takes the crop *before* ``ToTensor``/``Normalize`` (those run inside the
ONNX graph, see ``docs/DESIGN.md``), so this module reproduces, on PIL images, exactly::

    Image.open(f).convert("RGB") -> Resize(resize_size) -> CenterCrop(crop_size)

and returns ``np.ndarray`` of ``uint8``, shape ``(crop_size, crop_size, 3)``, RGB, C-contiguous.
On top of that it applies the EXIF orientation and refuses hostile input before decoding:
the pixel count declared by the header (decompression bombs) and the size of the resized
intermediate (extreme aspect ratios) are both bounded by :class:`DecodeLimits`.

Everything here is pure (no module-level mutable state, no PIL globals changed), so
:func:`preprocess` can run concurrently in a thread pool.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError, features

from server.errors import ImageTooLarge, InvalidImage, UnsupportedImageFormat
from server.modelmeta import Preprocessing

__all__ = [
    "SUPPORTED_FORMATS",
    "DecodeLimits",
    "center_crop_box",
    "decode",
    "preprocess",
    "resized_size",
    "transform",
]

#: Pillow format names this server decodes. Anything else is refused (415) without being
#: parsed further, so rarely used (and rarely audited) Pillow plugins never see client bytes.
SUPPORTED_FORMATS: Final[tuple[str, ...]] = (
    "JPEG",  # includes MPO (JPEG + extra pictures, phone cameras): the first is the primary
    "PNG",
    "GIF",
    "WEBP",
    "BMP",
    "TIFF",
    *(("AVIF",) if features.check_module("avif") else ()),
)

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

# EXIF Orientation (tag 0x0112) -> the transpose that makes the image upright
# (the same table as PIL.ImageOps.exif_transpose).
_ORIENTATION_TAG: Final = 0x0112
_EXIF_TRANSPOSE: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Magic numbers of supported formats, only to name the format in error messages.
_RASTER_MAGIC: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

# Recognisable formats this server does not decode (415, naming the format).
_UNSUPPORTED_MAGIC: Final[tuple[tuple[bytes, str], ...]] = (
    (b"%PDF-", "PDF"),
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "PSD (Photoshop)"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x1f\x8b", "gzip (e.g. SVGZ)"),
    (b"PK\x03\x04", "ZIP"),
    (b"AT&TFORM", "DjVu"),
)

_HEIF_BRANDS: Final = frozenset(
    {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
)
_AVIF_BRANDS: Final = frozenset({b"avif", b"avis"})


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds checked before any pixel is decoded.

    Attributes:
        max_pixels: most ``width * height`` the image header may declare (decompression bombs).
        max_resized_pixels: most pixels of the intermediate image torchvision's ``Resize``
            makes (shorter side -> ``resize_size``); bounds extreme aspect ratios, e.g. a
            1x65535 image would be resized to 256 x 16,776,960.
        fast_jpeg: decode large JPEGs at a reduced DCT scale (Pillow's draft mode) to at least
            twice the resize target on the shorter side, then resize as usual. Faster, but not
            bit-exact with torchvision.
    """

    max_pixels: int = 40_000_000
    max_resized_pixels: int = 50_000_000
    fast_jpeg: bool = False

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.max_resized_pixels < 1:
            raise ValueError("DecodeLimits.max_pixels and max_resized_pixels must be >= 1")


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


def decode(data: bytes, limits: DecodeLimits = DecodeLimits()) -> Image.Image:
    """Decode image bytes to an upright RGB PIL image.

    The first frame of animated or multi-page images is used; the EXIF orientation is
    applied; any mode converts as ``Image.convert("RGB")`` does (alpha is dropped, 16-bit and
    float greyscale saturate at 255, as torchvision users get). ``limits.fast_jpeg`` is not
    used here (it needs the resize target; see :func:`preprocess`).

    Returns:
        a loaded ``PIL.Image.Image`` in mode ``"RGB"``, size at most ``limits.max_pixels``.

    Raises:
        InvalidImage: empty, not an image, zero-sized, truncated or corrupt data.
        UnsupportedImageFormat: a recognisable format that is not in :data:`SUPPORTED_FORMATS`
            (SVG, PDF, HEIC, ...), or a colour mode with no RGB conversion.
        ImageTooLarge: the header declares more than ``limits.max_pixels`` pixels.
    """
    return _load_rgb(_open(data, limits))


def transform(
    img: Image.Image,
    spec: Preprocessing,
    limits: DecodeLimits = DecodeLimits(),
) -> npt.NDArray[np.uint8]:
    """torchvision's ``Resize(spec.resize_size)`` + ``CenterCrop(spec.crop_size)`` on ``img``.

    Args:
        img: an RGB PIL image (as :func:`decode` returns).
        spec: the model's preprocessing; ``spec.interpolation`` names the PIL filter
            (``bilinear`` is PIL's antialiased triangle filter, as torchvision's PIL path).
        limits: only ``max_resized_pixels`` is used.

    Returns:
        ``uint8`` array of shape ``(crop_size, crop_size, 3)``, RGB, C-contiguous, writable.

    Raises:
        ImageTooLarge: the resized intermediate exceeds ``limits.max_resized_pixels``.
        ValueError: ``img`` is not RGB, or ``spec`` has a non-positive size or an unknown
            interpolation (a model/configuration error, not a client error).
    """
    if img.mode != "RGB":
        raise ValueError(f"transform needs an RGB image, got mode {img.mode!r}")
    resample = _resample(spec)
    if spec.crop_size < 1:
        raise ValueError(f"crop_size must be positive, got {spec.crop_size}")
    width, height = img.size
    if width < 1 or height < 1:
        raise InvalidImage(f"image has zero size ({width}x{height})")
    size = _check_resized(width, height, spec.resize_size, limits)
    if size != img.size:
        img = img.resize(size, resample)
    box = center_crop_box(size[0], size[1], spec.crop_size)
    if box != (0, 0, size[0], size[1]):
        img = img.crop(box)
    out = np.array(img, dtype=np.uint8)
    if out.shape != (spec.crop_size, spec.crop_size, 3):  # pragma: no cover - PIL invariant
        raise AssertionError(f"unexpected crop shape {out.shape}")
    return np.ascontiguousarray(out)


def preprocess(
    data: bytes,
    spec: Preprocessing,
    limits: DecodeLimits = DecodeLimits(),
) -> npt.NDArray[np.uint8]:
    """Image bytes -> model input crop: :func:`decode` then :func:`transform`.

    Both size limits are checked on the header before any pixel is decoded. With
    ``limits.fast_jpeg``, JPEGs whose shorter side is at least ``4 * spec.resize_size`` are
    decoded at a reduced DCT scale (1/2, 1/4 or 1/8) that keeps the shorter side at least
    ``2 * spec.resize_size``, then resized as usual.

    Returns:
        ``uint8`` array of shape ``(crop_size, crop_size, 3)``, RGB, C-contiguous.

    Raises:
        InvalidImage, UnsupportedImageFormat, ImageTooLarge: as :func:`decode` and
            :func:`transform`.
        ValueError: ``spec`` is invalid (see :func:`transform`).
    """
    _resample(spec)  # a bad spec is a configuration error: fail before touching the bytes
    img = _open(data, limits)
    _check_resized(img.width, img.height, spec.resize_size, limits)
    if limits.fast_jpeg and img.format in ("JPEG", "MPO"):
        target = 2 * spec.resize_size
        if min(img.size) >= 2 * target:  # below that the draft scale would be 1 anyway
            try:
                img.draft("RGB", (target, target))
            except Exception as e:  # pragma: no cover - draft only rewrites the tile
                raise InvalidImage(f"cannot decode JPEG image: {e}") from None
    return transform(_load_rgb(img), spec, limits)


# --- internals ------------------------------------------------------------------------------


def _resample(spec: Preprocessing) -> Image.Resampling:
    try:
        resample = _RESAMPLE[spec.interpolation.lower()]
    except KeyError:
        raise ValueError(
            f"unknown interpolation {spec.interpolation!r}; expected one of {sorted(_RESAMPLE)}"
        ) from None
    if spec.resize_size < 1 or spec.crop_size < 1:
        raise ValueError(f"resize_size and crop_size must be positive, got {spec}")
    return resample


def _check_resized(width: int, height: int, size: int, limits: DecodeLimits) -> tuple[int, int]:
    new_w, new_h = resized_size(width, height, size)
    if new_w * new_h > limits.max_resized_pixels:
        raise ImageTooLarge(
            f"image aspect ratio is too extreme: {width}x{height} would be resized to "
            f"{new_w}x{new_h} ({new_w * new_h} pixels, limit {limits.max_resized_pixels})"
        )
    return new_w, new_h


def _sniff_unsupported(data: bytes) -> str | None:
    """Name a recognisable non-supported format from its first bytes, else None."""
    head = data[:1024]
    for magic, name in _UNSUPPORTED_MAGIC:
        if head.startswith(magic):
            return name
    if b"%PDF-" in head:  # PDF allows junk before the header
        return "PDF"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return "HEIC/HEIF"
        if brand in _AVIF_BRANDS and "AVIF" not in SUPPORTED_FORMATS:
            return "AVIF"
    if head[:1] == b"P" and head[1:2] in b"123456" and head[2:3].isspace():
        return "PNM (PBM/PGM/PPM)"
    if head.startswith(b"RIFF") and head[8:12] != b"WEBP":
        return "RIFF (not WebP)"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<?xml", b"<svg", b"<!doctype svg", b"<!--")) and b"<svg" in text:
        return "SVG"
    return None


def _name_raster(data: bytes) -> str:
    for magic, name in _RASTER_MAGIC:
        if data.startswith(magic):
            return name
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    return "image"


def _decode_error(fmt: str, e: BaseException) -> InvalidImage:
    msg = str(e)
    if "truncated" in msg.lower():
        return InvalidImage(f"cannot decode image: truncated {fmt} data")
    return InvalidImage(f"cannot decode {fmt} image: {msg or type(e).__name__}")


def _open(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Identify and open (header only), check the declared size. Nothing is decoded yet."""
    if not data:
        raise InvalidImage("empty image body")
    unsupported = _sniff_unsupported(data)
    if unsupported is not None:
        raise UnsupportedImageFormat(
            f"unsupported image format: {unsupported}; supported: {', '.join(SUPPORTED_FORMATS)}"
        )
    try:
        img = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # PIL's own guard (MAX_IMAGE_PIXELS) fired before ours could; the warning is an
        # exception only where warnings are errors. Either way: too large.
        raise ImageTooLarge(f"image is too large: {e}") from None
    except UnidentifiedImageError:
        fmt = _name_raster(data)
        if fmt == "image":
            raise InvalidImage(
                "cannot decode image: not a recognised image format "
                f"(supported: {', '.join(SUPPORTED_FORMATS)})"
            ) from None
        raise InvalidImage(f"cannot decode {fmt} image: corrupt or truncated header") from None
    except MemoryError:
        raise
    except Exception as e:
        raise _decode_error(_name_raster(data), e) from None

    width, height = img.size
    if width < 1 or height < 1:
        raise InvalidImage(f"image has zero size ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"image is too large: {width}x{height} = {width * height} pixels "
            f"(limit {limits.max_pixels})"
        )
    if img.format == "PNG":
        _check_png_crcs(data)
    return img


_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


def _check_png_crcs(data: bytes) -> None:
    """Verify the CRC of every critical PNG chunk (IHDR, PLTE, IDAT, IEND).

    Pillow checks only the chunks it parses itself, not the image data; libpng's default is
    an error for a critical chunk and we follow it. Ancillary chunks (lowercase first letter)
    are not checked, as libpng only warns about them.

    Raises:
        InvalidImage: a bad CRC, or the data ends before the IEND chunk. Pillow stops reading
            once it has every row, so a PNG cut inside its last IDAT chunk (or missing IEND)
            would otherwise be served.
    """
    pos = len(_PNG_SIGNATURE)
    end = len(data)
    while pos + 12 <= end:
        (length,) = struct.unpack_from(">I", data, pos)
        ctype = data[pos + 4 : pos + 8]
        stop = pos + 8 + length
        if stop + 4 > end:
            break
        if 65 <= ctype[0] <= 90:  # critical chunk
            (crc,) = struct.unpack_from(">I", data, stop)
            if zlib.crc32(memoryview(data)[pos + 4 : stop]) != crc:
                name = ctype.decode("latin-1")
                raise InvalidImage(f"cannot decode PNG image: bad CRC in {name} chunk")
        if ctype == b"IEND":
            return
        pos = stop + 4
    raise InvalidImage("cannot decode image: truncated PNG data")


def _load_rgb(img: Image.Image) -> Image.Image:
    """Decode the (first) frame, make it upright and RGB."""
    fmt = img.format or "image"
    try:
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"image is too large: {e}") from None
    except MemoryError:
        raise
    except Exception as e:
        raise _decode_error(fmt, e) from None
    width, height = img.size
    if width < 1 or height < 1:
        raise InvalidImage(f"image has zero size ({width}x{height})")

    try:
        orientation = img.getexif().get(_ORIENTATION_TAG, 1)
    except MemoryError:
        raise
    except Exception:
        orientation = 1  # unreadable EXIF: keep the image as stored
    method = _EXIF_TRANSPOSE.get(orientation) if isinstance(orientation, int) else None

    try:
        rgb = _to_rgb(img)
    except ValueError as e:
        raise UnsupportedImageFormat(f"unsupported {fmt} colour mode {img.mode!r}: {e}") from None
    if method is not None:
        rgb = rgb.transpose(method)
    return rgb


def _to_rgb(img: Image.Image) -> Image.Image:
    """``img.convert("RGB")``, without the warning Pillow gives for P images whose
    transparency is a byte string (going through RGBA gives identical RGB values)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and isinstance(img.info.get("transparency"), bytes):
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")
