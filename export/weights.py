"""Weights: the registry of published ImageNet weights, download with hash check, loading.

Three sources, chosen by one string (``--weights``):

* ``imagenet``: torchvision's published state_dicts, downloaded into a cache directory and
  checked the way torchvision checks them (the sha256 of the file starts with the hex prefix
  in its name). Each entry carries its own preprocessing and published accuracy as data.
* a path to a ``state_dict`` file (``torch.save(model.state_dict())``, torchvision's included).
* ``random``: seeded torchvision-style init, random BatchNorm affine parameters, and running
  statistics measured on real photos (the default calibration photos), so that the BatchNorms
  are not identities (folding is exercised for real) and the logits on photos have the scale
  of a network whose statistics match its inputs.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from contract.modelmeta import Preprocessing
from export.resnet import build

BASE_URL_ENV = "RESNET_WEIGHTS_BASE_URL"
CACHE_DIR_ENV = "RESNET_WEIGHTS_CACHE"
DEFAULT_BASE_URL = "https://download.pytorch.org/models/"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HASH_RE = re.compile(r"-([a-f0-9]+)\.")
_ALTERNATIVES = (
    "use `--weights random` (seeded random weights, for tests and offline machines) or "
    "`--weights PATH` (a state_dict .pth file copied onto this machine)"
)


class WeightsError(Exception):
    """Weights could not be obtained or do not fit the model; the message says why."""


class WeightsDownloadError(WeightsError):
    """Download of published weights failed (network, HTTP error or hash mismatch)."""


def imagenet_transform(resize_size: int = 256) -> Preprocessing:
    """torchvision's ``ImageClassification`` eval preset: resize, centre crop 224, ImageNet
    mean/std, bilinear. The dataclass is the server's, so both sides share one contract."""
    return Preprocessing(resize_size, 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear")


@dataclass(frozen=True)
class WeightsEntry:
    """One published set of weights: file name (with hash prefix), transform, accuracy."""

    architecture: str
    name: str
    file_name: str
    preprocessing: Preprocessing
    accuracy: Mapping[str, float]
    num_params: int

    @property
    def hash_prefix(self) -> str:
        match = _HASH_RE.search(self.file_name)
        if match is None:
            raise ValueError(f"no hash prefix in {self.file_name!r}")
        return match.group(1)

    def url(self, base_url: str) -> str:
        return base_url.rstrip("/") + "/" + self.file_name


REGISTRY: dict[tuple[str, str], WeightsEntry] = {
    (e.architecture, e.name): e
    for e in (
        WeightsEntry(
            "resnet18", "IMAGENET1K_V1", "resnet18-f37072fd.pth", imagenet_transform(),
            {"acc@1": 69.758, "acc@5": 89.078}, 11_689_512,
        ),
        WeightsEntry(
            "resnet50", "IMAGENET1K_V1", "resnet50-0676ba61.pth", imagenet_transform(),
            {"acc@1": 76.130, "acc@5": 92.862}, 25_557_032,
        ),
        WeightsEntry(
            "resnet50", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth", imagenet_transform(resize_size=232),
            {"acc@1": 80.858, "acc@5": 95.434}, 25_557_032,
        ),
    )
}  # fmt: skip
DEFAULT_WEIGHTS = {"resnet18": "IMAGENET1K_V1", "resnet50": "IMAGENET1K_V1"}


@dataclass(frozen=True)
class ResolvedWeights:
    """A state_dict plus what the artifact's metadata must say about it."""

    state_dict: dict[str, Tensor] = field(repr=False)
    name: str  # IMAGENET1K_V1 / IMAGENET1K_V2 / random / file
    source: str  # imagenet / file / random
    detail: str  # URL, file name or seed=N
    sha256: str
    preprocessing: Preprocessing
    accuracy: dict[str, float]

    @property
    def is_random(self) -> bool:
        return self.source == "random"


def lookup(architecture: str, name: str | None = None) -> WeightsEntry:
    """Registry entry for ``architecture`` (default weights when ``name`` is None).

    Raises ``WeightsError`` listing the known names when there is none.
    """
    name = name or DEFAULT_WEIGHTS.get(architecture, "")
    try:
        return REGISTRY[(architecture, name)]
    except KeyError:
        known = [n for a, n in REGISTRY if a == architecture]
        raise WeightsError(f"no weights {name!r} for {architecture}; known: {known}") from None


def default_cache_dir() -> Path:
    """``$RESNET_WEIGHTS_CACHE``, else ``$XDG_CACHE_HOME/resnet-server``, else ``~/.cache/...``."""
    if env := os.environ.get(CACHE_DIR_ENV):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "resnet-server"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, dest: Path, progress: bool) -> None:
    """Stream ``url`` into ``dest`` with a tqdm bar; raises ``URLError``/``OSError``."""
    with urllib.request.urlopen(url, timeout=30) as resp, dest.open("wb") as f:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress
        ) as bar:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))


def download(url: str, dest: Path, hash_prefix: str, progress: bool = True) -> str:
    """Download ``url`` to ``dest`` (temp file, hash check, then rename); return its sha256.

    Raises ``WeightsDownloadError`` on any network error or when the sha256 does not start
    with ``hash_prefix``; nothing is left at ``dest`` then.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".partial")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _fetch(url, tmp, progress)
        digest = sha256_file(tmp)
        if not digest.startswith(hash_prefix):
            raise WeightsDownloadError(
                f"hash mismatch for {url}: sha256 {digest[:16]}... does not start with "
                f"{hash_prefix!r} (corrupted or wrong file); retry, or {_ALTERNATIVES}"
            )
        os.replace(tmp, dest)
        return digest
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise WeightsDownloadError(f"cannot download {url}: {reason}; {_ALTERNATIVES}") from e
    finally:
        tmp.unlink(missing_ok=True)


def load_state_dict_file(path: Path) -> dict[str, Tensor]:
    """Read a ``torch.save``-d state_dict (tensors only, ``weights_only=True``).

    Raises ``WeightsError`` when the file is missing or not a mapping of names to tensors.
    """
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist; {_ALTERNATIVES}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise WeightsError(f"cannot read {path} as a state_dict: {e}") from e
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state_dict (name -> tensor mapping)")
    return dict(obj)


def load_into(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """``model.load_state_dict(state_dict, strict=True)`` with a readable error.

    Raises ``WeightsError`` naming a few missing / unexpected keys or the shape mismatch.
    """
    expected, given = set(model.state_dict()), set(state_dict)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise WeightsError(
            f"state_dict does not fit {type(model).__name__}: "
            f"{len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"state_dict does not fit: {e}") from e


def calibration_batch(spec: Preprocessing) -> Tensor:
    """The default calibration photos (``export.calibration``), centre-cropped as the server
    does and normalised: float32 ``[10, 3, crop, crop]``."""
    from export.calibration import samples, skimage_photos
    from export.reference import to_tensor_normalize

    images = samples(skimage_photos().photos, spec, per_photo=1)
    return to_tensor_normalize(images, spec, torch.float32)


def _calibrate_bn(model: nn.Module, seed: int, batch: Tensor) -> None:
    """Give every BatchNorm random affine parameters and running statistics measured on
    ``batch`` (real photos) in train mode, as training would leave them."""
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
            bn.bias.copy_((torch.rand(bn.num_features, generator=gen) - 0.5) * 0.2)
            bn.momentum = None  # cumulative average: one batch sets the stats exactly
        model.train()
        model(batch)
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def _sha256_state_dict(state_dict: Mapping[str, Tensor]) -> str:
    buf = io.BytesIO()
    torch.save(dict(state_dict), buf)
    return hashlib.sha256(buf.getvalue()).hexdigest()


def random_weights(architecture: str, seed: int) -> ResolvedWeights:
    """Seeded random weights (reproducible for a given torch version and seed)."""
    spec = imagenet_transform()
    batch = calibration_batch(spec)
    torch.manual_seed(seed)
    model = build(architecture)
    _calibrate_bn(model, seed, batch)
    state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return ResolvedWeights(
        state_dict,
        "random",
        "random",
        f"seed={seed}",
        _sha256_state_dict(state_dict),
        spec,
        {},
    )


def imagenet_weights(
    architecture: str,
    name: str | None = None,
    cache_dir: Path | None = None,
    base_url: str | None = None,
    progress: bool = True,
) -> ResolvedWeights:
    """Published weights from the cache, downloading them first if needed.

    ``base_url`` defaults to ``$RESNET_WEIGHTS_BASE_URL`` or download.pytorch.org.
    Raises ``WeightsDownloadError`` (download or hash failure) or ``WeightsError``.
    """
    entry = lookup(architecture, name)
    url = entry.url(base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL)
    path = (cache_dir or default_cache_dir()) / entry.file_name
    if path.is_file():
        digest = sha256_file(path)
        if not digest.startswith(entry.hash_prefix):
            raise WeightsDownloadError(f"cached {path} fails the hash check; delete it and retry")
    else:
        digest = download(url, path, entry.hash_prefix, progress)
    return ResolvedWeights(
        load_state_dict_file(path),
        entry.name,
        "imagenet",
        url,
        digest,
        entry.preprocessing,
        dict(entry.accuracy),
    )


def file_weights(path: Path) -> ResolvedWeights:
    """A local state_dict file; preprocessing is torchvision's V1 default (256/224)."""
    state_dict = load_state_dict_file(path)
    return ResolvedWeights(
        state_dict, "file", "file", path.name, sha256_file(path), imagenet_transform(), {}
    )


def resolve(
    architecture: str,
    weights: str,
    *,
    weights_name: str | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> ResolvedWeights:
    """Dispatch ``--weights``: ``imagenet``, ``random`` or a file path. Never falls back."""
    if weights == "imagenet":
        return imagenet_weights(architecture, weights_name, cache_dir, progress=progress)
    if weights == "random":
        return random_weights(architecture, seed)
    return file_weights(Path(weights))
