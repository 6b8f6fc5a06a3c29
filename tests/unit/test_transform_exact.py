"""contract.images.preprocess is byte for byte the straightforward decode -> resize -> crop it replaced.

``reference_preprocess`` below is the transform as it was before the crop-only resampling
(``contract/images/transform.py``, 2026-12-04): open, load, EXIF transpose of the RGB image, a full
``Image.resize`` and an ``Image.crop``. Every test feeds both the same bytes and compares the
output bytes exactly; the float64 references in ``test_preprocess.py`` check the numbers.

Inputs: the 7 verification photos in ``contract/data/photos``, scikit-image's data photos,
and generated images (real photo content and noise) over many sizes, aspect ratios, modes,
filters, crop specs and EXIF orientations 1-8, including images smaller than the crop.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from contract.images.decode import DecodeLimits
from contract.images.preprocess import preprocess
from contract.images.transform import _pass_order, _vertical_first, transform
from contract.modelmeta import Preprocessing

skdata = pytest.importorskip("skimage.data")

U8 = npt.NDArray[np.uint8]
PHOTOS: Final = Path(__file__).resolve().parents[2] / "contract" / "data" / "photos"
SKIMAGE_PHOTOS: Final = ("astronaut", "chelsea", "coffee", "rocket", "camera", "cat", "retina")


def spec(resize: int = 256, crop: int = 224, interpolation: str = "bilinear") -> Preprocessing:
    return Preprocessing(
        resize_size=resize,
        crop_size=crop,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        interpolation=interpolation,
    )


SPEC: Final = spec()

# --- the reference: today's transform before the change -------------------------------------

_FILTERS: Final = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
_TRANSPOSE: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def reference_transform(img: Image.Image, sp: Preprocessing) -> bytes:
    """Resize (shorter side -> resize_size, torchvision's sizes), then centre crop."""
    w, h = img.size
    r = sp.resize_size
    size = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)
    if size != img.size:
        img = img.resize(size, _FILTERS[sp.interpolation])

    def offset(side: int) -> int:
        c = sp.crop_size
        return -((c - side) // 2) if c > side else round((side - c) / 2.0)

    left, top = offset(size[0]), offset(size[1])
    box = (left, top, left + sp.crop_size, top + sp.crop_size)
    if box != (0, 0, *size):
        img = img.crop(box)
    return img.tobytes()


def reference_preprocess(data: bytes, sp: Preprocessing = SPEC) -> bytes:
    """Open, decode, convert to RGB, apply the EXIF orientation, then reference_transform."""
    img = Image.open(io.BytesIO(data))
    img.load()
    orientation = img.getexif().get(0x0112, 1)
    if img.mode == "P" and isinstance(img.info.get("transparency"), bytes):
        rgb = img.convert("RGBA").convert("RGB")
    else:
        rgb = img if img.mode == "RGB" else img.convert("RGB")
    if orientation in _TRANSPOSE:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    return reference_transform(rgb, sp)


def assert_same(data: bytes, sp: Preprocessing = SPEC) -> None:
    out = preprocess(data, sp)
    expected = reference_preprocess(data, sp)
    assert out.shape == (sp.crop_size, sp.crop_size, 3)
    if out.tobytes() != expected:
        diff = np.frombuffer(expected, np.uint8).reshape(out.shape).astype(int) - out
        raise AssertionError(
            f"{np.count_nonzero(diff)} of {diff.size} bytes differ (max {np.abs(diff).max()})"
        )


# --- inputs ------------------------------------------------------------------------------------


def encode(img: Image.Image | U8, fmt: str, **kw: Any) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def skphoto(name: str) -> Image.Image:
    arr = getattr(skdata, name)()
    return Image.fromarray(np.ascontiguousarray(arr[..., :3]) if arr.ndim == 3 else arr)


def content(width: int, height: int, seed: int) -> Image.Image:
    """A real photo resampled to width x height (even seeds) or uniform noise (odd seeds):
    noise makes every coefficient of every tap visible in the output."""
    if seed % 2:
        rng = np.random.default_rng(seed)
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    name = SKIMAGE_PHOTOS[seed // 2 % 4]
    return skphoto(name).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)


def _sizes() -> list[tuple[int, int]]:
    fixed = [
        (1, 1),
        (2, 3),
        (1, 300),
        (300, 1),
        (17, 3000),
        (100, 100),
        (223, 223),
        (224, 224),
        (225, 224),
        (224, 300),
        (255, 255),
        (256, 256),
        (257, 256),
        (256, 257),
        (300, 299),
        (333, 500),
        (375, 500),
        (500, 375),
        (451, 300),
        (577, 433),
        (640, 427),
        (512, 600),
        (768, 512),
        (1024, 256),
        (1633, 1225),
        (1225, 1633),
        (2001, 999),
        # Pillow 13 runs these vertical pass first (and the two after them horizontal)
        (509, 1789),
        (400, 1000),
        (1000, 509),
        (361, 728),
        (900, 255),
        (509, 1000),
        (300, 600),
    ]
    rng = np.random.default_rng(27)
    drawn = []
    for _ in range(40):
        short = int(np.exp(rng.uniform(np.log(1), np.log(1400))))
        aspect = float(np.exp(rng.uniform(0.0, np.log(4.0))))
        long = max(short, int(short * aspect))
        drawn.append((short, long) if rng.random() < 0.5 else (long, short))
    return fixed + drawn


SIZES: Final = _sizes()


# --- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(PHOTOS.glob("*.*g")), ids=lambda p: p.name)
def test_verification_photos(path: Path) -> None:
    assert_same(path.read_bytes())


@pytest.mark.parametrize("name", SKIMAGE_PHOTOS)
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_skimage_photos(name: str, fmt: str) -> None:
    img = skphoto(name)
    assert_same(encode(img if fmt == "PNG" else img.convert("RGB"), fmt, quality=90))


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_generated_sizes(width: int, height: int) -> None:
    for seed in (width + height) * 2, (width + height) * 2 + 1:  # one photo, one noise
        assert_same(encode(content(width, height, seed), "PNG"))


@pytest.mark.parametrize("interpolation", sorted(_FILTERS))
@pytest.mark.parametrize(
    ("resize", "crop"),
    [(256, 224), (232, 224), (342, 299), (224, 224), (224, 256), (160, 128), (520, 512)],
)
def test_filters_and_crop_specs(interpolation: str, resize: int, crop: int) -> None:
    sp = spec(resize, crop, interpolation)
    for i, (w, h) in enumerate(
        [(577, 433), (333, 500), (640, 427), (200, 150), (3, 120), (900, 300)]
    ):
        assert_same(encode(content(w, h, i), "PNG"), sp)


# Stored sizes whose upright image takes each path: both pass orders (either way round),
# first pass restricted (small) and not (over 4 MiB of lines), smaller than the crop.
ORIENTED_SIZES: Final = [
    (451, 300), (300, 451), (577, 433), (150, 99), (1789, 509), (509, 1789), (1000, 400),
    (1633, 1225), (1225, 1633), (120, 3000), (3000, 120),
]  # fmt: skip


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(("width", "height"), ORIENTED_SIZES)
def test_exif_orientations(orientation: int, width: int, height: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    for seed in (0, 1):
        img = content(width, height, seed)
        assert_same(encode(img, "JPEG", quality=92, exif=exif.tobytes()))
        assert_same(encode(img, "PNG", exif=exif.tobytes()))


@pytest.mark.parametrize("orientation", [3, 5, 6, 8])
@pytest.mark.parametrize("mode", ["L", "P", "PA", "LA", "RGBA", "I;16", "1"])
def test_exif_orientation_of_other_modes(orientation: int, mode: str) -> None:
    """The transpose runs before the RGB conversion now (a quarter of the memory for L/P):
    still the bytes of converting first."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    base = content(333, 250, 0)
    if mode == "PA":
        img = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        img.info["transparency"] = bytes([0, 128] + [255] * 62)
    else:
        img = base.convert(mode)
    assert_same(encode(img, "PNG", exif=exif.tobytes()))


@pytest.mark.parametrize("orientation", range(2, 9))
@pytest.mark.parametrize("interpolation", ["bicubic", "lanczos", "box", "nearest"])
def test_exif_orientations_with_other_filters_and_padding(
    orientation: int, interpolation: str
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    for i, (w, h) in enumerate([(333, 500), (1789, 509), (200, 150)]):
        data = encode(content(w, h, i), "PNG", exif=exif.tobytes())
        assert_same(data, spec(256, 224, interpolation))
        assert_same(data, spec(224, 256, interpolation))  # the crop pads


def test_exif_orientations_actually_rotate() -> None:
    """The orientation tests would pass vacuously if both sides ignored EXIF."""
    exif = Image.Exif()
    exif[0x0112] = 6
    img = content(451, 300, 0)
    rotated = preprocess(encode(img, "PNG", exif=exif.tobytes()), SPEC)
    assert rotated.tobytes() == reference_transform(img.transpose(_TRANSPOSE[6]), SPEC)
    assert rotated.tobytes() != reference_transform(img, SPEC)


@pytest.mark.parametrize(
    "mode", ["L", "LA", "P", "PA", "RGBA", "CMYK", "I;16", "I", "F", "1", "YCbCr"]
)
def test_modes(mode: str) -> None:
    base = content(500, 375, 0)
    img = base.convert("RGBA").convert(mode) if mode == "PA" else base.convert(mode)
    fmt = {"CMYK": "JPEG", "YCbCr": "JPEG", "I": "TIFF", "F": "TIFF"}.get(mode, "PNG")
    if mode == "PA":
        img = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        img.info["transparency"] = bytes([0, 128] + [255] * 62)
    assert_same(encode(img, fmt))


def test_fast_jpeg_off_by_default_is_exact_on_a_large_jpeg() -> None:
    data = encode(content(2400, 1800, 2), "JPEG", quality=90)
    assert DecodeLimits().fast_jpeg is False
    assert_same(data)


def test_pillow_pass_order_rule() -> None:
    """transform's crop-only resize follows Pillow's order of passes; pin the rule it infers
    against what Pillow does, on noise (where either order shows) over many sizes/filters."""
    assert _pass_order() is (int(Image.__version__.split(".")[0]) >= 13)
    rng = np.random.default_rng(9)
    filters = [f for f in _FILTERS.values() if f != Image.Resampling.NEAREST]
    checked = 0
    for i in range(600):
        w, h, new_w, new_h = (int(x) for x in rng.integers(2, 90, 4))
        if new_w == w or new_h == h:
            continue
        filt = filters[i % len(filters)]
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        one = img.resize((new_w, new_h), filt).tobytes()
        h_first = img.resize((new_w, h), filt).resize((new_w, new_h), filt).tobytes()
        v_first = img.resize((w, new_h), filt).resize((new_w, new_h), filt).tobytes()
        if h_first == v_first:  # e.g. the box filter: both orders agree
            continue
        expect_v = bool(_pass_order()) and _vertical_first((w, h), (new_w, new_h))
        assert one == (v_first if expect_v else h_first), (w, h, new_w, new_h, filt)
        checked += 1
    assert checked > 300


def test_transform_writes_out_and_checks_its_shape() -> None:
    img = content(500, 375, 1)
    out = np.full((224, 224, 3), 7, np.uint8)
    assert transform(img, SPEC, out=out) is out
    assert out.tobytes() == reference_transform(img, SPEC)
    with pytest.raises(ValueError, match=r"out has shape \(224, 224, 4\), the crop is"):
        transform(img, SPEC, out=np.zeros((224, 224, 4), np.uint8))
