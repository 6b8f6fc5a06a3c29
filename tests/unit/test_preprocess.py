"""contract.images.decode / transform / preprocess: torchvision-exact resize/crop, decoding of every mode, hostile input.

Real photos come from scikit-image's bundled sample data (a test-only dependency).
The numeric reference is PIL's antialiased bilinear filter re-implemented in float64 numpy.
"""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageFile, features

from contract.errors import ImageTooLarge, InvalidImage, UnsupportedImageFormat
from contract.images.decode import SUPPORTED_FORMATS, DecodeLimits, decode
from contract.images.preprocess import preprocess
from contract.images.transform import center_crop_box, resized_size, transform
from contract.modelmeta import Preprocessing

skdata = pytest.importorskip("skimage.data")

SPEC = Preprocessing(
    resize_size=256,
    crop_size=224,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    interpolation="bilinear",
)
U8 = npt.NDArray[np.uint8]


# --- helpers ----------------------------------------------------------------------------------


def photo(name: str) -> U8:
    arr: U8 = np.ascontiguousarray(getattr(skdata, name)()[..., :3])
    return arr


def photo_of_size(width: int, height: int, name: str = "astronaut") -> U8:
    """A real photo resampled (Lanczos) to exactly width x height."""
    img = Image.fromarray(photo(name)).resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(img)


def encode(img: Image.Image | U8, fmt: str, **kw: Any) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def decoded(data: bytes) -> U8:
    """The stored pixels as plain PIL decodes them (no EXIF rotation)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def pil_weights(in_size: int, out_size: int) -> npt.NDArray[np.float64]:
    """PIL's antialiased bilinear (triangle) resampling matrix, (out_size, in_size), float64.

    Mirrors Pillow's Resample.c precompute_coeffs: scale = in/out, the filter support is
    widened by max(scale, 1) when downscaling, pixel centres at +0.5, and each row is
    normalised to sum 1.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    w = np.zeros((out_size, in_size))
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        x = np.arange(xmin, xmax, dtype=np.float64)
        k = np.maximum(0.0, 1.0 - np.abs((x - center + 0.5) / filterscale))
        w[xx, xmin:xmax] = k / k.sum()
    return w


def reference(pixels: U8, resize: int = 256, crop: int = 224) -> npt.NDArray[np.float64]:
    """float64 torchvision Resize(resize) + CenterCrop(crop), PIL bilinear, no rounding."""
    h, w = pixels.shape[:2]
    new_w, new_h = resized_size(w, h, resize)
    x = pixels.astype(np.float64).transpose(2, 0, 1)  # (3, h, w)
    if (new_w, new_h) != (w, h):
        x = x @ pil_weights(w, new_w).T  # horizontal pass first, as PIL
        x = pil_weights(h, new_h) @ x
    left, top, right, bottom = center_crop_box(new_w, new_h, crop)
    return x.transpose(1, 2, 0)[top:bottom, left:right]


def assert_crop(out: Any, crop: int = 224) -> None:
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.uint8
    assert out.shape == (crop, crop, 3)
    assert out.flags.c_contiguous


def png_with_size(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose IHDR declares width x height (CRC fixed up)."""
    data = bytearray(encode(np.zeros((1, 1, 3), np.uint8), "PNG"))
    assert data[12:16] == b"IHDR"
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# --- sizes: hand-computed torchvision values ----------------------------------------------------


@pytest.mark.parametrize(
    ("w", "h", "expected"),
    [
        (500, 375, (341, 256)),  # 256*500/375 = 341.33
        (375, 500, (256, 341)),
        (333, 500, (256, 384)),  # 384.38
        (257, 1000, (256, 996)),  # 996.11
        (301, 299, (257, 256)),  # 257.71
        (451, 300, (384, 256)),  # 384.85
        (640, 427, (383, 256)),  # 383.70
        (300, 450, (256, 384)),  # exactly 384
        (256, 256, (256, 256)),
        (1, 1, (256, 256)),
        (3, 600, (256, 51200)),
        (600, 3, (51200, 256)),
        (1, 65535, (256, 16776960)),
    ],
)
def test_resized_size_matches_torchvision(w: int, h: int, expected: tuple[int, int]) -> None:
    assert resized_size(w, h, 256) == expected


@pytest.mark.parametrize(
    ("w", "h", "expected"),
    [
        (341, 256, (58, 16, 282, 240)),  # left round(58.5) = 58 (half to even)
        (383, 256, (80, 16, 304, 240)),  # left round(79.5) = 80
        (257, 256, (16, 16, 240, 240)),  # round(16.5) = 16
        (256, 996, (16, 386, 240, 610)),
        (256, 384, (16, 80, 240, 304)),
        (224, 224, (0, 0, 224, 224)),
        # smaller than the crop: torchvision pads (crop-side)//2 before, the rest after
        (100, 300, (-62, 38, 162, 262)),
        (101, 101, (-61, -61, 163, 163)),
        (300, 223, (38, 0, 262, 224)),  # pad 0 before, 1 after
    ],
)
def test_center_crop_box_matches_torchvision(
    w: int, h: int, expected: tuple[int, int, int, int]
) -> None:
    assert center_crop_box(w, h, 224) == expected


def test_sizes_reject_nonpositive() -> None:
    with pytest.raises(ValueError, match="positive"):
        resized_size(0, 5, 256)
    with pytest.raises(ValueError, match="positive"):
        center_crop_box(5, 5, 0)


# --- numerics against the float64 reference ------------------------------------------------------

REAL_PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina"]
ODD_SIZES = [(500, 375), (333, 500), (257, 1000), (301, 299), (225, 224), (1024, 257)]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("name", REAL_PHOTOS)
def test_real_photos_match_float64_reference(name: str, fmt: str) -> None:
    data = encode(photo(name), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    out = preprocess(data, SPEC)
    assert_crop(out)
    diff = np.abs(out.astype(np.float64) - reference(decoded(data)))
    # PIL rounds to uint8 after the horizontal pass (error <= 0.5, weights are >= 0 and sum
    # to 1) and again at the end: at most 1 level from the exact float result.
    assert diff.max() <= 1.0, diff.max()
    assert diff.mean() < 0.5


@pytest.mark.parametrize(("w", "h"), ODD_SIZES)
def test_odd_sizes_match_float64_reference(w: int, h: int) -> None:
    for fmt in ("PNG", "JPEG"):
        data = encode(photo_of_size(w, h, "coffee"), fmt)
        out = preprocess(data, SPEC)
        assert_crop(out)
        ref = reference(decoded(data))
        assert np.abs(out.astype(np.float64) - ref).max() <= 1.0


def test_reference_is_sensitive_to_off_by_one_crop() -> None:
    # Guards the test itself: a crop shifted by one pixel must be detected.
    pixels = photo_of_size(500, 375, "astronaut")
    out = preprocess(encode(pixels, "PNG"), SPEC)
    ref = reference(pixels)
    shifted = np.roll(ref, 1, axis=1)
    assert np.abs(out - ref).max() <= 1
    assert np.abs(out - shifted).max() > 1


def test_transform_pads_like_torchvision_when_smaller_than_crop() -> None:
    spec = Preprocessing(200, 224, SPEC.mean, SPEC.std, "bilinear")
    pixels = photo_of_size(300, 250, "chelsea")
    out = preprocess(encode(pixels, "PNG"), spec)
    assert_crop(out)
    # torchvision: resize to 240x200, pad top 12 / bottom 12 with 0, crop width at 8
    resized = np.asarray(Image.fromarray(pixels).resize((240, 200), Image.Resampling.BILINEAR))
    padded = np.pad(resized, ((12, 12), (0, 0), (0, 0)))
    np.testing.assert_array_equal(out, padded[:, 8:232])


@pytest.mark.parametrize("interp", ["bicubic", "nearest", "lanczos", "box", "hamming"])
def test_other_interpolations_use_the_pil_filter(interp: str) -> None:
    spec = Preprocessing(256, 224, SPEC.mean, SPEC.std, interp)
    pixels = photo("chelsea")
    out = preprocess(encode(pixels, "PNG"), spec)
    resample = getattr(Image.Resampling, interp.upper())
    expected = Image.fromarray(pixels).resize((384, 256), resample).crop((80, 16, 304, 240))
    np.testing.assert_array_equal(out, np.asarray(expected))


def test_bad_spec_is_a_value_error() -> None:
    data = encode(photo("chelsea"), "PNG")
    with pytest.raises(ValueError, match="interpolation"):
        preprocess(data, Preprocessing(256, 224, SPEC.mean, SPEC.std, "cubic-ish"))
    with pytest.raises(ValueError, match="positive"):
        preprocess(data, Preprocessing(0, 224, SPEC.mean, SPEC.std))
    with pytest.raises(ValueError, match="RGB"):
        transform(Image.new("L", (300, 300)), SPEC)
    with pytest.raises(ValueError, match=">= 1"):
        DecodeLimits(max_pixels=0)


def test_decode_then_transform_equals_preprocess() -> None:
    data = encode(photo("rocket"), "JPEG")
    img = decode(data, DecodeLimits())
    assert img.mode == "RGB"
    assert img.size == (640, 427)
    np.testing.assert_array_equal(transform(img, SPEC), preprocess(data, SPEC))


# --- EXIF orientation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "method"),
    [
        (3, Image.Transpose.ROTATE_180),
        (6, Image.Transpose.ROTATE_270),
        (8, Image.Transpose.ROTATE_90),
        (2, Image.Transpose.FLIP_LEFT_RIGHT),
        (5, Image.Transpose.TRANSPOSE),
    ],
)
def test_exif_orientation_is_applied(orientation: int, method: Image.Transpose) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(photo("chelsea"), "JPEG", quality=92, exif=exif.tobytes())
    stored = decoded(data)  # 451x300 as stored in the file
    upright = Image.fromarray(stored).transpose(method)
    expected = preprocess(encode(upright, "PNG"), SPEC)
    out = preprocess(data, SPEC)
    np.testing.assert_array_equal(out, expected)
    assert decode(data).size == upright.size
    assert not np.array_equal(out, preprocess(encode(stored, "PNG"), SPEC))


def test_malformed_exif_is_ignored() -> None:
    data = encode(photo("chelsea"), "JPEG", exif=b"Exif\x00\x00MM\x00*garbage")
    # Pillow warns (UserWarning) about corrupt EXIF; where warnings are errors (as in this
    # test suite) that becomes a clean InvalidImage, otherwise the image is used as stored.
    with pytest.raises(InvalidImage, match="EXIF"):
        preprocess(data, SPEC)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = preprocess(data, SPEC)
        stored = decoded(data)
    np.testing.assert_array_equal(out, preprocess(encode(stored, "PNG"), SPEC))


# --- modes and formats ---------------------------------------------------------------------------


def _modes() -> dict[str, bytes]:
    rgb = photo("coffee")
    img = Image.fromarray(rgb)
    gray = np.asarray(img.convert("L"))
    p = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    p.info["transparency"] = bytes([0, 128] + [255] * 62)
    p_gif = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    rgba = np.dstack(
        [rgb, np.linspace(0, 255, rgb.shape[1], dtype=np.uint8)[None, :].repeat(400, 0)]
    )
    return {
        "L": encode(img.convert("L"), "PNG"),
        "LA": encode(img.convert("LA"), "PNG"),
        "P+tRNS bytes": encode(p, "PNG"),
        "P+GIF transparency": encode(p_gif, "GIF", transparency=3),
        "RGBA": encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "CMYK JPEG": encode(img.convert("CMYK"), "JPEG", quality=95),
        "I;16 PNG": encode(Image.fromarray(gray.astype(np.uint16)), "PNG"),
        "I;16 PNG full range": encode(Image.fromarray(gray.astype(np.uint16) * 257), "PNG"),
        "I TIFF": encode(Image.fromarray(gray.astype(np.int32)), "TIFF"),
        "F TIFF": encode(Image.fromarray(gray.astype(np.float32) * 0.9), "TIFF"),
        "1-bit": encode(img.convert("1"), "PNG"),
        "RGB BMP": encode(img, "BMP"),
        "RGB TIFF": encode(img, "TIFF"),
    }


MODES = _modes()


@pytest.mark.parametrize("kind", list(MODES))
def test_every_mode_matches_convert_rgb(kind: str) -> None:
    data = MODES[kind]
    out = preprocess(data, SPEC)
    assert_crop(out)
    with Image.open(io.BytesIO(data)) as im, warnings.catch_warnings():
        # what a torchvision user gets; Pillow warns for P images with byte transparency
        warnings.simplefilter("ignore", UserWarning)
        converted = im.convert("RGB")
    np.testing.assert_array_equal(out, preprocess(encode(converted, "PNG"), SPEC))


def test_mode_table_covers_the_modes() -> None:
    modes = set()
    for data in MODES.values():
        with Image.open(io.BytesIO(data)) as im:
            modes.add(im.mode)
    assert {"L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1", "RGB"} <= modes


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.fromarray(photo_of_size(300, 260, n)) for n in ("astronaut", "coffee")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    with Image.open(io.BytesIO(data)) as im:
        assert getattr(im, "n_frames", 1) == 2
        first = im.convert("RGB")
        im.seek(1)
        second = im.convert("RGB")
    out = preprocess(data, SPEC)
    np.testing.assert_array_equal(out, preprocess(encode(first, "PNG"), SPEC))
    assert not np.array_equal(out, preprocess(encode(second, "PNG"), SPEC))


def test_multipage_tiff_uses_first_page() -> None:
    pages = [
        Image.fromarray(photo_of_size(w, h, n))
        for (w, h, n) in [(320, 300, "rocket"), (500, 400, "coffee")]
    ]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    with Image.open(io.BytesIO(data)) as im:
        assert getattr(im, "n_frames", 1) == 2
    np.testing.assert_array_equal(preprocess(data, SPEC), preprocess(encode(pages[0], "PNG"), SPEC))


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_webp_lossless_and_animated() -> None:
    pixels = photo("chelsea")
    expected = preprocess(encode(pixels, "PNG"), SPEC)
    np.testing.assert_array_equal(preprocess(encode(pixels, "WEBP", lossless=True), SPEC), expected)
    lossy = preprocess(encode(pixels, "WEBP", quality=90), SPEC)
    assert np.abs(lossy.astype(int) - expected).mean() < 3
    frames = [Image.fromarray(pixels), Image.fromarray(pixels[::-1].copy())]
    anim = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    np.testing.assert_array_equal(preprocess(anim, SPEC), expected)


def test_supported_formats_are_pillow_open_formats() -> None:
    Image.init()
    assert set(SUPPORTED_FORMATS) <= set(Image.OPEN)


def test_mpo_uses_the_primary_picture() -> None:
    first, second = Image.fromarray(photo("rocket")), Image.fromarray(photo_of_size(640, 427))
    data = encode(first, "MPO", save_all=True, append_images=[second], quality=95)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "MPO"
        primary = im.convert("RGB")
    np.testing.assert_array_equal(preprocess(data, SPEC), preprocess(encode(primary, "PNG"), SPEC))


# --- tiny and extreme shapes ---------------------------------------------------------------------


def test_one_pixel_image() -> None:
    data = encode(np.array([[[10, 200, 30]]], np.uint8), "PNG")
    out = preprocess(data, SPEC)
    assert_crop(out)
    assert (out == np.array([10, 200, 30], np.uint8)).all()


@pytest.mark.parametrize(("w", "h"), [(3, 600), (600, 3), (2, 1), (1, 190)])
def test_extreme_aspect_ratios_work(w: int, h: int) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    out = preprocess(encode(pixels, "PNG"), SPEC)
    assert_crop(out)
    # the centre column/row of the source survives (bilinear upscaling between neighbours)
    assert out.min() >= pixels.min()
    assert out.max() <= pixels.max()


@pytest.mark.parametrize(("w", "h"), [(1, 65535), (65535, 1), (2, 20000)])
def test_too_extreme_aspect_ratio_is_too_large(w: int, h: int) -> None:
    data = encode(np.zeros((h, w), np.uint8), "PNG")
    with pytest.raises(ImageTooLarge, match="aspect ratio"):
        preprocess(data, SPEC)


# --- decompression bombs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("w", "h"),
    [
        (50_000, 50_000),  # 2.5e9: PIL's own guard (2x MAX_IMAGE_PIXELS) also fires
        (10_000, 10_000),  # 1e8: PIL would only warn; warnings are errors here
        (8_000, 6_000),  # 4.8e7: only our limit
    ],
)
def test_decompression_bomb_is_refused_without_decoding(w: int, h: int) -> None:
    data = png_with_size(w, h)
    assert len(data) < 100
    start = time.perf_counter()
    with pytest.raises(ImageTooLarge, match="too large"):
        preprocess(data, SPEC)
    with pytest.raises(ImageTooLarge):
        decode(data, DecodeLimits())
    assert time.perf_counter() - start < 0.5


def test_bomb_warning_outside_error_mode_still_refused() -> None:
    data = png_with_size(10_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageTooLarge):
            preprocess(data, SPEC)


def test_zlib_bomb_png_is_refused() -> None:
    # a real PNG: 7000x7000 greyscale, all-zero IDAT compressed to a few tens of KB
    w = h = 7000
    raw = zlib.compress(b"\x00" * ((w + 1) * h), 9)

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", raw)
        + chunk(b"IEND", b"")
    )
    assert len(data) < 100_000
    with pytest.raises(ImageTooLarge, match="49000000 pixels"):
        preprocess(data, SPEC)


def test_max_pixels_is_our_own_limit() -> None:
    data = encode(photo("chelsea"), "JPEG")
    with pytest.raises(ImageTooLarge, match="limit 1000"):
        preprocess(data, SPEC, DecodeLimits(max_pixels=1000))
    with pytest.raises(ImageTooLarge, match="aspect ratio"):
        preprocess(data, SPEC, DecodeLimits(max_resized_pixels=1000))


def test_zero_size_png_is_invalid() -> None:
    with pytest.raises(InvalidImage):
        preprocess(png_with_size(0, 10), SPEC)


# --- errors --------------------------------------------------------------------------------------

JPEG = encode(photo("chelsea"), "JPEG", quality=90)
PNG = encode(photo("chelsea"), "PNG")


def _scan_start(jpeg: bytes) -> int:
    sos = jpeg.find(b"\xff\xda")
    length: int = struct.unpack(">H", jpeg[sos + 2 : sos + 4])[0]
    return sos + 2 + length


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"hello, world\n", "not a recognised image format"),
        (b"<!DOCTYPE html><html><body><img src='x.jpg'></body></html>", "not a recognised"),
        (b"\x00" * 64, "not a recognised"),
    ],
)
def test_not_an_image_is_invalid(data: bytes, match: str) -> None:
    with pytest.raises(InvalidImage, match=match) as e:
        preprocess(data, SPEC)
    assert e.value.status == 400


@pytest.mark.parametrize("cut", [3, 10, 100, 620, 700, len(JPEG) // 2, len(JPEG) - 2])
def test_truncated_jpeg_is_invalid(cut: int) -> None:
    with pytest.raises(InvalidImage, match=r"cannot decode (JPEG )?image") as e:
        preprocess(JPEG[:cut], SPEC)
    if cut > _scan_start(JPEG):
        assert e.value.message == "cannot decode image: truncated JPEG data"


@pytest.mark.parametrize("cut", [8, 20, 33, 50, 1000, len(PNG) // 2, len(PNG) - 100])
def test_truncated_png_is_invalid(cut: int) -> None:
    with pytest.raises(InvalidImage, match=r"cannot decode (PNG )?image"):
        preprocess(PNG[:cut], SPEC)


def test_corrupt_jpeg_entropy_data_is_invalid() -> None:
    data = bytearray(JPEG)
    start = _scan_start(JPEG) + (len(JPEG) - _scan_start(JPEG)) // 3
    data[start : start + 2000] = bytes(255 - b for b in data[start : start + 2000])
    with pytest.raises(InvalidImage, match="cannot decode JPEG image: broken data stream"):
        preprocess(bytes(data), SPEC)


@pytest.mark.parametrize("marker", [b"\xff\xc8", b"\xff\xd8", b"\xff\xc0", b"\xff\xda"])
def test_stray_marker_in_jpeg_scan_is_invalid(marker: bytes) -> None:
    data = bytearray(JPEG)
    at = _scan_start(JPEG) + (len(JPEG) - _scan_start(JPEG)) // 3
    data[at : at + 2] = marker
    with pytest.raises(InvalidImage, match="cannot decode JPEG image"):
        preprocess(bytes(data), SPEC)


@pytest.mark.parametrize("seed", range(8))
def test_random_jpeg_bit_flips_never_crash(seed: int) -> None:
    # libjpeg treats many entropy-data errors as warnings and decodes garbage; those cannot
    # be detected. Whatever happens, it is a clean 400 or a well-formed crop, never a 500.
    data = bytearray(JPEG)
    rng = np.random.default_rng(seed)
    for i in rng.integers(_scan_start(JPEG), len(JPEG) - 2, size=50):
        data[i] ^= 0xFF
    try:
        out = preprocess(bytes(data), SPEC)
    except InvalidImage as e:
        message = e.message
    else:
        assert_crop(out)
        return
    assert message.startswith("cannot decode")


def test_png_bad_crc_is_invalid() -> None:
    bad_ihdr = bytearray(PNG)
    bad_ihdr[29] ^= 1  # IHDR CRC
    with pytest.raises(InvalidImage, match="cannot decode PNG image"):
        preprocess(bytes(bad_ihdr), SPEC)
    bad_idat = bytearray(PNG)
    bad_idat[PNG.rfind(b"IEND") - 5] ^= 1  # last IDAT chunk's CRC; its data is intact
    with pytest.raises(InvalidImage, match="bad CRC in IDAT chunk"):
        preprocess(bytes(bad_idat), SPEC)
    bad_data = bytearray(PNG)
    bad_data[PNG.find(b"IDAT") + 100] ^= 0x55  # data and CRC disagree
    with pytest.raises(InvalidImage, match="cannot decode PNG image"):
        preprocess(bytes(bad_data), SPEC)


SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (SVG, "SVG"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>', "SVG"),
        (b"\xef\xbb\xbf  <!-- x --><svg/>", "SVG"),
        (PDF, "PDF"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "EPS"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
        (b"8BPS\x00\x01" + b"\x00" * 40, "PSD"),
        (b"P6\n2 2\n255\n" + b"\x00" * 12, "PNM"),
    ],
)
def test_non_raster_formats_are_unsupported(data: bytes, name: str) -> None:
    with pytest.raises(UnsupportedImageFormat, match=name) as e:
        preprocess(data, SPEC)
    assert e.value.status == 415


# --- fast_jpeg -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    big = Image.fromarray(photo("rocket")).resize((4000, 3000), Image.Resampling.BICUBIC)
    return encode(big, "JPEG", quality=90)


def test_fast_jpeg_deviation_is_bounded(big_jpeg: bytes) -> None:
    exact = preprocess(big_jpeg, SPEC).astype(np.int16)
    fast = preprocess(big_jpeg, SPEC, DecodeLimits(fast_jpeg=True))
    assert_crop(fast)
    diff = np.abs(exact - fast)
    assert diff.mean() < 3.0, diff.mean()
    assert diff.max() < 64, diff.max()


def test_fast_jpeg_keeps_exif_orientation(big_jpeg: bytes) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    with Image.open(io.BytesIO(big_jpeg)) as im:
        data = encode(im, "JPEG", quality=90, exif=exif.tobytes())
    exact = preprocess(data, SPEC).astype(np.int16)
    fast = preprocess(data, SPEC, DecodeLimits(fast_jpeg=True))
    assert np.abs(exact - fast).mean() < 3.0
    assert decode(data).size == (3000, 4000)


def test_fast_jpeg_is_exact_for_small_jpegs_and_other_formats() -> None:
    fast = DecodeLimits(fast_jpeg=True)
    small = encode(photo_of_size(1500, 1000, "retina"), "JPEG")  # 1000 < 4 * 256: no draft
    np.testing.assert_array_equal(preprocess(small, SPEC, fast), preprocess(small, SPEC))
    png = encode(photo_of_size(2100, 1100, "retina"), "PNG")
    np.testing.assert_array_equal(preprocess(png, SPEC, fast), preprocess(png, SPEC))


# --- no global state, thread safety --------------------------------------------------------------


def test_no_pil_globals_changed_and_thread_safe() -> None:
    before = (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS)
    inputs = [MODES[k] for k in MODES] + [JPEG, PNG, JPEG[: len(JPEG) // 2], SVG]

    def run(data: bytes) -> bytes | str:
        try:
            return preprocess(data, SPEC).tobytes()
        except (InvalidImage, UnsupportedImageFormat) as e:
            return type(e).__name__

    serial = [run(d) for d in inputs]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            assert list(pool.map(run, inputs)) == serial
    assert before == (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS)
