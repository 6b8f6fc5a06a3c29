"""Calibration photos: real photographs for INT8 calibration and for ``--weights random``.

The default set is read from the photos scikit-image ships (``skimage/data``), chosen to be
disjoint from the verification photos of ``contract/photos.py``; a user can give a folder
instead (``--calibration-dir``). Any photo whose bytes are a verification photo's is refused:
calibrating on the photos that judge the result would hide its errors.

Licences of the default set, as the docstrings of ``skimage.data`` state them: astronaut and
hubble_deep_field (NASA) public domain; retina, cell, brick, grass, gravel CC0; clock_motion
public domain (Stefan van der Walt); coins and ihc "no known copyright restrictions". They are
read from the installed package, never copied into this repository.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from contract.errors import ImageTooLarge, InvalidImage, UnsupportedImageFormat
from contract.images.decode import decode
from contract.images.transform import transform
from contract.modelmeta import Preprocessing
from contract.photos import Photo, verification_photos

#: scikit-image data files of the default calibration set (none is a verification photo).
SKIMAGE_PHOTOS: Final = (
    "astronaut.png", "brick.png", "cell.png", "clock_motion.png", "coins.png", "grass.png",
    "gravel.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg",
)  # fmt: skip
IMAGE_SUFFIXES: Final = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
#: Most photos read from a user folder (sorted by path); calibration time grows linearly.
MAX_PHOTOS: Final = 256
MIN_PHOTOS: Final = 4


class CalibrationError(ValueError):
    """Calibration photos cannot be had or used; the message names the photo and the fix."""


@dataclass(frozen=True)
class CalibrationSet:
    """Photos for calibration and where they came from (``source``, for the metadata)."""

    photos: list[Photo]
    source: str


def skimage_photos() -> CalibrationSet:
    """The default set: :data:`SKIMAGE_PHOTOS` from the installed scikit-image.

    Raises ``CalibrationError`` naming the fix when scikit-image is not installed.
    """
    try:
        from importlib.metadata import version

        root = resources.files("skimage").joinpath("data")
        photos = [Photo.from_bytes(n, root.joinpath(n).read_bytes()) for n in SKIMAGE_PHOTOS]
        source = f"scikit-image {version('scikit-image')} data photos"
    except (ModuleNotFoundError, OSError) as e:
        raise CalibrationError(
            f"the default calibration photos come from scikit-image, which is missing or "
            f"incomplete ({e}): pip install 'resnet-server[export]' (for --precision int8 "
            "you can also pass --calibration-dir DIR with your own photos)"
        ) from None
    return CalibrationSet(photos, source)


def folder_photos(directory: Path) -> CalibrationSet:
    """Image files under ``directory`` (recursively, by suffix, sorted, at most MAX_PHOTOS).

    Raises ``CalibrationError`` when the folder is missing or holds fewer than MIN_PHOTOS.
    """
    if not directory.is_dir():
        raise CalibrationError(f"calibration folder {directory} does not exist")
    paths = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(paths) < MIN_PHOTOS:
        raise CalibrationError(
            f"calibration folder {directory} holds {len(paths)} images; give at least "
            f"{MIN_PHOTOS} (a few hundred varied photos is better)"
        )
    photos = [Photo.from_bytes(str(p.relative_to(directory)), p.read_bytes()) for p in paths]
    return CalibrationSet(photos[:MAX_PHOTOS], f"folder {directory.name}")


def check_disjoint(photos: list[Photo]) -> None:
    """Raises ``CalibrationError`` if any photo is byte-identical to a verification photo."""
    held_out = {p.sha256: p.name for p in verification_photos()}
    clash = [(p.name, held_out[p.sha256]) for p in photos if p.sha256 in held_out]
    if clash:
        raise CalibrationError(
            f"calibration photo {clash[0][0]} is the verification photo {clash[0][1]}: "
            "verification photos must never be used for calibration; remove it"
        )


def check_usable(photos: list[Photo]) -> None:
    """Raises ``CalibrationError`` naming the first photo that is a verification photo
    (:func:`check_disjoint`) or that does not decode (:func:`decode_photo`)."""
    check_disjoint(photos)
    for photo in photos:
        decode_photo(photo)


def decode_photo(photo: Photo) -> Image.Image:
    """Decode with the server's decoder; ``CalibrationError`` naming the photo if it fails."""
    try:
        return decode(photo.data)
    except (InvalidImage, UnsupportedImageFormat, ImageTooLarge) as e:
        raise CalibrationError(
            f"calibration photo {photo.name} cannot be used: {e}; remove or replace it"
        ) from None


def _random_crop(img: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    # torchvision's RandomResizedCrop(scale=(0.25, 1), ratio=(3/4, 4/3)), one draw: other
    # parts and scales of the photo than the centre crop the server sees.
    w, h = img.size
    area = w * h * rng.uniform(0.25, 1.0)
    ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    cw = min(w, round(float(np.sqrt(area * ratio))))
    ch = min(h, round(float(np.sqrt(area / ratio))))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    box = (left, top, left + cw, top + ch)
    return img.resize((size, size), Image.Resampling.BILINEAR, box=box)


def samples(
    photos: list[Photo], spec: Preprocessing, per_photo: int = 4, seed: int = 0
) -> NDArray[np.uint8]:
    """Model inputs from ``photos``: per photo, the server's centre crop, its mirror image,
    then ``per_photo - 2`` seeded random resized crops (deterministic for a given seed).

    Returns uint8 ``[len(photos) * per_photo, crop, crop, 3]``.
    Raises ``CalibrationError`` naming a photo that does not decode.
    """
    rng = np.random.default_rng(seed)
    out: list[NDArray[np.uint8]] = []
    for photo in photos:
        img = decode_photo(photo)
        centre = transform(img, spec)
        crops = [centre, np.ascontiguousarray(centre[:, ::-1])]
        for _ in range(per_photo - 2):
            crops.append(np.asarray(_random_crop(img, spec.crop_size, rng), dtype=np.uint8))
        out += crops[:per_photo]
    return np.stack(out)
