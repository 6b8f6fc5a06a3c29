"""Image bytes -> an upright RGB PIL image, refusing hostile input before decoding.

The untrusted half of preprocessing: the format is identified from the bytes (only
:data:`SUPPORTED_FORMATS` reach a Pillow decoder; recognisable others are named in a 415), the
pixel count the header declares is bounded before any pixel is decoded (decompression bombs),
PNG chunk CRCs are checked as libpng would, the EXIF orientation is applied, and every
Pillow failure becomes :class:`~contract.errors.InvalidImage` with a message naming the format.

Everything here is pure (no module-level mutable state, no PIL globals changed), so it can
run concurrently in a thread pool.
"""

from __future__ import annotations

import importlib
import io
import struct
import zlib
from dataclasses import dataclass
from typing import Final

from PIL import Image, UnidentifiedImageError, features

from contract.errors import ImageTooLarge, InvalidImage, UnsupportedImageFormat

__all__ = [
    "DECODER_MODULES", "SUPPORTED_FORMATS", "DecodeLimits", "declared_size", "decode",
    "load_rgb", "open_image", "orientation", "preload",
]  # fmt: skip

#: Pillow format names this server decodes: an allow-list, each with why it is worth its risk.
#: Anything else is refused (415) without being parsed further, so rarely used (and rarely
#: audited) Pillow plugins never see client bytes. Whatever the format, a decode runs in a
#: worker process held to a CPU and memory budget (``server.flow.decodepool``).
SUPPORTED_FORMATS: Final[tuple[str, ...]] = (
    # What cameras and the web produce; MPO (JPEG + extra pictures, phone cameras): the first
    # is the primary. libjpeg-turbo; the scan count is checked before decoding.
    "JPEG",
    "PNG",  # screenshots, datasets; zlib; every critical chunk's CRC is checked first
    "GIF",  # still common on the web; the first frame only (later frames are never decoded)
    "WEBP",  # the web's default; libwebp; the first frame only
    "BMP",  # datasets and Windows tools; uncompressed or RLE, bounded by the pixel count
    # scanners, microscopy, GIS exports; libtiff, the largest surface here: strip and tile
    # tables are checked against the image size before decoding, the first page only
    "TIFF",
    *(("AVIF",) if features.check_module("avif") else ()),  # where Pillow has libavif
)

#: The Pillow plugins that open :data:`SUPPORTED_FORMATS` (MPO: what the JPEG opener returns
#: for a multi-picture file). Pillow imports a plugin on first use, and a format it has not
#: imported yet makes it import every plugin it has: 84 ms of the first TIFF's decode on a
#: 2-core AMD EPYC (4.5 ms later ones), past a decode worker's 30 ms header budget in the
#: tests. :func:`preload` imports them once, before any request.
DECODER_MODULES: Final[tuple[str, ...]] = tuple(
    f"PIL.{name}ImagePlugin"
    for name in ("Jpeg", "Mpo", "Png", "Gif", "WebP", "Bmp", "Tiff")
    + (("Avif",) if "AVIF" in SUPPORTED_FORMATS else ())
)


def preload() -> None:
    """Import the decoders of :data:`SUPPORTED_FORMATS` now (idempotent), so that no request
    pays Pillow's import of its plugins."""
    for name in DECODER_MODULES:
        importlib.import_module(name)


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
        max_jpeg_scans: most start-of-scan markers a JPEG may hold. A progressive JPEG has
            about 10 (libjpeg's default script), an MPO or an EXIF thumbnail adds a few; each
            scan makes the decoder pass over the whole image again (300 small scans made a
            4 MP file cost 26x its baseline decode).
    """

    max_pixels: int = 40_000_000
    max_resized_pixels: int = 50_000_000
    fast_jpeg: bool = False
    max_jpeg_scans: int = 100

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.max_resized_pixels < 1 or self.max_jpeg_scans < 1:
            raise ValueError(
                "DecodeLimits.max_pixels, max_resized_pixels and max_jpeg_scans must be >= 1"
            )


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
    """Identify and open (header only), check the declared size and the container's
    structure (scans, strip tables, chunks). Nothing is decoded yet.

    Raises:
        InvalidImage, UnsupportedImageFormat, ImageTooLarge: as :func:`decode`.
    """
    img = _open_header(data, limits)
    if img.format == "PNG":
        _check_png_crcs(data)
    elif img.format in ("JPEG", "MPO"):
        _check_jpeg_scans(data, limits.max_jpeg_scans)
    elif img.format == "TIFF":
        _check_tiff_tables(img)
    return img


def declared_size(data: bytes, limits: DecodeLimits) -> tuple[int, int]:
    """``(width, height)`` the header declares, checked against ``limits.max_pixels``; the
    structure is not checked (:func:`open_image` does that), so this costs one header parse.

    Raises:
        InvalidImage, UnsupportedImageFormat, ImageTooLarge: as :func:`decode`.
    """
    size: tuple[int, int] = _open_header(data, limits).size
    return size


def _open_header(data: bytes, limits: DecodeLimits) -> Image.Image:
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
    return img


def _check_jpeg_scans(data: bytes, limit: int) -> None:
    """Refuse a JPEG with more than ``limit`` start-of-scan markers.

    In entropy-coded data every 0xFF byte is followed by 0x00 (stuffing) or a restart marker,
    so ``FF DA`` occurs only as a marker: counting it is exact and costs one pass over bytes.

    Raises:
        InvalidImage: too many scans.
    """
    scans = data.count(b"\xff\xda")
    if scans > limit:
        raise InvalidImage(
            f"cannot decode JPEG image: {scans} scans (limit {limit}; a progressive JPEG has "
            "about 10): refused before decoding"
        )


# TIFF tags (TIFF 6.0): the strip and tile tables and what they must match.
_ROWS_PER_STRIP, _STRIP_OFFSETS, _STRIP_BYTES = 278, 273, 279
_TILE_WIDTH, _TILE_LENGTH, _TILE_OFFSETS, _TILE_BYTES = 322, 323, 324, 325
_SAMPLES_PER_PIXEL, _PLANAR_CONFIG = 277, 284


def _check_tiff_tables(img: Image.Image) -> None:
    """Refuse a TIFF whose strip or tile tables hold more entries than its size needs (each
    entry is a seek and a decoder call: a table much longer than the image is pure cost).

    Raises:
        InvalidImage: a table longer than the image needs, or a zero strip/tile size.
    """
    tags = getattr(img, "tag_v2", {})
    width, height = img.size
    planes = int(tags.get(_SAMPLES_PER_PIXEL, 1)) if tags.get(_PLANAR_CONFIG, 1) == 2 else 1
    if _TILE_OFFSETS in tags:
        tw, th = int(tags.get(_TILE_WIDTH, 0)), int(tags.get(_TILE_LENGTH, 0))
        if tw < 1 or th < 1:
            raise InvalidImage("cannot decode TIFF image: zero tile size")
        needed = -(-width // tw) * -(-height // th) * planes
        table, what = _TILE_OFFSETS, "tiles"
    else:
        rows = int(tags.get(_ROWS_PER_STRIP, height) or height)
        needed = -(-height // max(1, min(rows, height))) * planes
        table, what = _STRIP_OFFSETS, "strips"
    for tag in (table, _TILE_BYTES if table == _TILE_OFFSETS else _STRIP_BYTES):
        entries = tags.get(tag, ())
        count = len(entries) if isinstance(entries, tuple) else 1
        if count > needed:
            raise InvalidImage(
                f"cannot decode TIFF image: {count} {what} declared, a {width}x{height} image "
                f"needs {needed}: refused before decoding"
            )


_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


def _check_png_crcs(data: bytes) -> None:
    """Verify the CRC of every critical PNG chunk (IHDR, PLTE, IDAT, IEND).

    Pillow checks only the chunks it parses itself, not the image data; libpng's default is
    an error for a critical chunk and we follow it. Ancillary chunks (lowercase first letter)
    are not checked, as libpng only warns about them.

    Raises:
        InvalidImage: a bad CRC, too many chunks for the file's size, or the data ends before
            the IEND chunk. Pillow stops reading
            once it has every row, so a PNG cut inside its last IDAT chunk (or missing IEND)
            would otherwise be served.
    """
    pos = len(_PNG_SIGNATURE)
    end = len(data)
    # Encoders write IDAT chunks of 8 kB or more (libpng's default); each chunk is a decoder
    # call, so a file of tiny chunks (a million empty IDATs in 12 MB decoded in 1.7 s for a
    # 64x64 image) is refused by count, before the first one is decoded.
    most, chunks = 64 + end // 1024, 0
    while pos + 12 <= end:
        chunks += 1
        if chunks > most:
            raise InvalidImage(
                f"cannot decode PNG image: more than {most} chunks in {end} bytes (an average "
                "chunk under 1 kB): refused before decoding"
            )
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
    says what would make it upright, e.g. for :func:`contract.images.transform.transform`).

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
