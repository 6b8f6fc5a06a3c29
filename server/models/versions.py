"""Model versions on disk: where they are, and which of them a model's policy serves.

Layout (Triton's, beside this server's flat one)::

    model_dir/resnet18.onnx            # flat: version 1 of resnet18
    model_dir/resnet50/1/model.onnx    # versioned: version 1 of resnet50
    model_dir/resnet50/3/model.onnx    #            version 3
    model_dir/resnet50/config.json     # optional: {"version_policy": ..., "response_cache": ...}

A version is a directory named by a positive integer holding ``model.onnx``. A name with both a
flat file and a directory gets the flat file as version 1 unless the directory has its own 1.

``config.json`` (all keys optional; Triton's names and meanings):

- ``"version_policy"``: ``{"latest": {"num_versions": N}}`` (the N highest; the default, N=1),
  ``{"all": {}}``, or ``{"specific": {"versions": [1, 3]}}``.
- ``"response_cache"``: ``{"enable": true}`` caches this model's answers
  (``response_cache_bytes`` must be set).

Reading the disk blocks: call :func:`scan` and :func:`read_config` from a thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
VERSION_FILE = "model.onnx"
_MAX_CONFIG_BYTES = 64 * 1024


class ConfigError(ValueError):
    """A model's ``config.json`` is not valid JSON or says something this server does not
    take; the message names the file and the fix."""


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model are served. ``kind``: ``latest`` (the ``num_versions``
    highest), ``all``, or ``specific`` (exactly ``versions``, those that exist)."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of ``available``, ascending."""
        have = sorted(set(available))
        if self.kind == "all":
            return have
        if self.kind == "specific":
            return [v for v in have if v in self.versions]
        return have[-self.num_versions :]

    def to_dict(self) -> dict[str, Any]:
        """As Triton writes it in a model configuration."""
        if self.kind == "all":
            return {"all": {}}
        if self.kind == "specific":
            return {"specific": {"versions": list(self.versions)}}
        return {"latest": {"num_versions": self.num_versions}}


@dataclass(frozen=True)
class ModelConfig:
    """A model's ``config.json`` (defaults when it has none)."""

    policy: VersionPolicy = field(default_factory=VersionPolicy)
    response_cache: bool = False


@dataclass(frozen=True)
class VersionFile:
    """One version's file and what identifies its content cheaply (size, mtime in ns): a
    file replaced in place is a new load."""

    version: int
    path: Path
    signature: tuple[int, int]


def _positive_int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")
    return value


def parse_policy(doc: object, where: str) -> VersionPolicy:
    """A ``version_policy`` object.

    Raises:
        ConfigError: not exactly one of ``latest``, ``all``, ``specific`` with valid values.
    """
    if not isinstance(doc, dict) or len(doc) != 1:
        raise ConfigError(
            f'{where}: version_policy must be one of {{"latest": {{"num_versions": N}}}}, '
            f'{{"all": {{}}}}, {{"specific": {{"versions": [...]}}}}; got {doc!r:.200}'
        )
    ((kind, body),) = doc.items()
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: version_policy.{kind} must be an object, got {body!r:.100}")
    if kind == "latest":
        n = _positive_int(body.get("num_versions", 1), f"{where}: latest.num_versions")
        return VersionPolicy("latest", num_versions=n)
    if kind == "all":
        return VersionPolicy("all")
    if kind == "specific":
        versions = body.get("versions")
        if not isinstance(versions, list) or not versions:
            raise ConfigError(f"{where}: specific.versions must be a non-empty list of versions")
        return VersionPolicy(
            "specific",
            versions=tuple(sorted({_positive_int(v, f"{where}: a version") for v in versions})),
        )
    raise ConfigError(f"{where}: unknown version_policy {kind!r}; use latest, all or specific")


def read_config(model_dir: Path, name: str) -> ModelConfig:
    """``model_dir/<name>/config.json``, or the defaults when there is none. Blocking.

    Raises:
        ConfigError: the file is unreadable JSON, too large, or has unknown keys or values.
    """
    path = model_dir / name / CONFIG_FILE
    if not path.is_file():
        return ModelConfig()
    raw = path.read_bytes()[: _MAX_CONFIG_BYTES + 1]
    if len(raw) > _MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {_MAX_CONFIG_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise ConfigError(f"{path}: not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: must be a JSON object")
    unknown = sorted(set(doc) - {"version_policy", "response_cache"})
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; known: version_policy, response_cache")
    policy = parse_policy(doc["version_policy"], str(path)) if "version_policy" in doc else None
    cache = doc.get("response_cache", {})
    if not isinstance(cache, dict) or not isinstance(cache.get("enable", False), bool):
        raise ConfigError(f'{path}: response_cache must be {{"enable": true|false}}')
    return ModelConfig(policy or VersionPolicy(), bool(cache.get("enable", False)))


def _signature(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns)


def scan(model_dir: Path) -> dict[str, dict[int, VersionFile]]:
    """Every model in ``model_dir``: name -> version -> file. Blocking (directory reads).

    Flat ``<name>.onnx`` is version 1; ``<name>/<int>/model.onnx`` the others (and 1, if
    present, wins over the flat file). Names without any version are left out.
    """
    found: dict[str, dict[int, VersionFile]] = {}
    for entry in sorted(model_dir.iterdir()):
        if entry.suffix == ".onnx" and entry.is_file():
            found.setdefault(entry.stem, {})[1] = VersionFile(1, entry, _signature(entry))
    for entry in sorted(model_dir.iterdir()):
        if not entry.is_dir():
            continue
        for sub in entry.iterdir():
            if not (sub.name.isdigit() and int(sub.name) >= 1):
                continue
            path = sub / VERSION_FILE
            if path.is_file():
                v = int(sub.name)
                found.setdefault(entry.name, {})[v] = VersionFile(v, path, _signature(path))
    return {name: dict(sorted(vs.items())) for name, vs in found.items() if vs}
