"""Image bytes -> an upright RGB PIL image, refusing hostile input before decoding.

The untrusted half of preprocessing: the format is identified from the bytes (only
:data:`SUPPORTED_FORMATS` reach a Pillow decoder; recognisable others are named in a 415), the
pixel count the header declares is bounded before any pixel is decoded (decompression bombs),
PNG chunk CRCs are checked as libpng would, the EXIF orientation is applied, and every
Pillow failure becomes :class:`~server.errors.InvalidImage` with a message naming the format.

Everything here is pure (no module-level mutable state, no PIL globals changed), so it can
run concurrently in a thread pool.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import Final

from PIL import Image, UnidentifiedImageError, features

from server.errors import ImageTooLarge, InvalidImage, UnsupportedImageFormat

__all__ = ["SUPPORTED_FORMATS", "DecodeLimits", "decode", "load_rgb", "open_image", "orientation"]

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
    return load_rgb(open_image(data, limits))


# --- internals ------------------------------------------------------------------------------


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


def open_image(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Identify and open (header only), check the declared size. Nothing is decoded yet.

    Raises:
        InvalidImage, UnsupportedImageFormat, ImageTooLarge: as :func:`decode`.
    """
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


def load_rgb(img: Image.Image, upright: bool = True) -> Image.Image:
    """Decode the (first) frame of an :func:`open_image` result, make it RGB and, with
    ``upright``, apply its EXIF orientation (without: as stored; :func:`orientation` then
    says what would make it upright, e.g. for :func:`server.transform.transform`).

    Raises:
        InvalidImage, UnsupportedImageFormat, ImageTooLarge: as :func:`decode`.
    """
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

    # Transpose first, in the stored mode: a permutation commutes with the per-pixel RGB
    # conversion, and for a 1-byte mode (L, P) its full-size copy is a quarter of an RGB one
    # (the RGB copy and a rotated RGB copy were both full size).
    if upright and (method := orientation(img)) is not None:
        img = img.transpose(method)
    try:
        return _to_rgb(img)
    except ValueError as e:
        raise UnsupportedImageFormat(f"unsupported {fmt} colour mode {img.mode!r}: {e}") from None


def orientation(img: Image.Image) -> Image.Transpose | None:
    """The transpose that makes a loaded ``img`` upright (its EXIF Orientation), None if it
    is upright already or its EXIF cannot be read (the image is then used as stored)."""
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except MemoryError:
        raise
    except Exception:
        return None  # unreadable EXIF: keep the image as stored
    return _EXIF_TRANSPOSE.get(value) if isinstance(value, int) else None


def _to_rgb(img: Image.Image) -> Image.Image:
    """``img.convert("RGB")``, without the warning Pillow gives for P images whose
    transparency is a byte string (going through RGBA gives identical RGB values)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and isinstance(img.info.get("transparency"), bytes):
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")
