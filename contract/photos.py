"""The verification photos: a few real, permissively licensed photographs shipped with the server.

They are the held-out set on which every exported model is checked (``export/verify.py``) and
on which the export step records reference logits (metadata ``reference``), so the server can
check any variant on the engine that serves it. They are never used to calibrate INT8 models.
Sources and licences: ``contract/data/photos/README.md``. numpy and Pillow only (no torch).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Final

import numpy as np
import numpy.typing as npt

from contract.images.preprocess import preprocess
from contract.modelmeta import Preprocessing

#: (file name, sha256 of its bytes): the files are byte-identical to the ones their source
#: packages ship, so the hashes can be checked against those packages.
VERIFICATION_SET: Final[tuple[tuple[str, str], ...]] = (
    ("camera.png", "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a"),
    ("chelsea.png", "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
    ("china.jpg", "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29"),
    ("coffee.png", "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
    ("flower.jpg", "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638"),
    ("grace_hopper.jpg", "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130"),
    ("rocket.jpg", "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
)


class PhotoSetError(RuntimeError):
    """A verification photo is missing or its bytes differ from the recorded sha256."""


@dataclass(frozen=True)
class Photo:
    """One encoded photograph: ``name`` (file name), ``data`` (its bytes), ``sha256`` (hex)."""

    name: str
    data: bytes
    sha256: str

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> Photo:
        return cls(name, data, hashlib.sha256(data).hexdigest())


def verification_photos() -> list[Photo]:
    """The shipped verification photos, in :data:`VERIFICATION_SET` order.

    Raises:
        PhotoSetError: a file is missing or altered (reinstall the package).
    """
    root = resources.files("contract").joinpath("data/photos")
    photos = []
    for name, sha256 in VERIFICATION_SET:
        try:
            photo = Photo.from_bytes(name, root.joinpath(name).read_bytes())
        except OSError as e:
            raise PhotoSetError(f"verification photo {name} cannot be read: {e}") from None
        if photo.sha256 != sha256:
            raise PhotoSetError(
                f"verification photo {name} is altered (sha256 {photo.sha256[:12]}..., expected "
                f"{sha256[:12]}...); reinstall resnet-server"
            )
        photos.append(photo)
    return photos


def reference_photos(names_and_hashes: tuple[tuple[str, str], ...]) -> list[Photo] | None:
    """The shipped photos a file's reference logits were computed on (``ReferenceLogits.photos``:
    (name, sha256) pairs, matched by hash, in that order); None if one is not shipped here
    (a file made with other photos).

    Raises:
        PhotoSetError: the shipped photos are altered (reinstall).
    """
    by_hash = {p.sha256: p for p in verification_photos()}
    found = [by_hash.get(sha256) for _, sha256 in names_and_hashes]
    return None if any(p is None for p in found) else [p for p in found if p is not None]


def photo_batch(photos: list[Photo], spec: Preprocessing) -> npt.NDArray[np.uint8]:
    """The photos as the server's own preprocessing feeds them to a model.

    Returns uint8 ``[len(photos), crop, crop, 3]`` (NHWC, RGB), C-contiguous.
    Raises what :func:`contract.images.preprocess.preprocess` raises for an undecodable photo.
    """
    return np.stack([preprocess(p.data, spec) for p in photos])
