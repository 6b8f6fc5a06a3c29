"""Read the self-describing metadata that ``export`` writes into an ONNX file.

The contract (keys and meanings) is documented in ``docs/DESIGN.md``. This module only
parses and validates it; it needs no ONNX or torch import: callers pass the
``custom_metadata_map`` of an ONNX Runtime session (``session.get_modelmeta()``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FORMAT_KEY = "resnet_server.format"
SUPPORTED_FORMATS = frozenset({"1"})


class MetadataError(ValueError):
    """The model file lacks a key or holds a malformed value; the message names which."""


@dataclass(frozen=True)
class Preprocessing:
    """torchvision-style eval transform: resize shorter side, centre crop, normalise.

    ``resize_size`` and ``crop_size`` are pixels; ``mean``/``std`` are per RGB channel on the
    [0, 1] scale; ``interpolation`` is a PIL filter name (``bilinear``, ``bicubic``).
    """

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        mean, std = tuple(float(x) for x in d["mean"]), tuple(float(x) for x in d["std"])
        if len(mean) != 3 or len(std) != 3:
            raise MetadataError("preprocessing mean and std need 3 values each")
        return cls(
            resize_size=int(d["resize_size"]),
            crop_size=int(d["crop_size"]),
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
            interpolation=str(d.get("interpolation", "bilinear")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "resize_size": self.resize_size,
            "crop_size": self.crop_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }


@dataclass(frozen=True)
class ModelMetadata:
    """Everything the server needs to serve a model, read from the file itself."""

    architecture: str
    weights: str
    weights_source: str
    weights_detail: str
    weights_sha256: str
    random_weights: bool
    preprocessing: Preprocessing
    accuracy: dict[str, float]
    labels: tuple[str, ...]
    input_name: str
    input_layout: str
    input_dtype: str
    output_name: str
    precision: str
    project_version: str
    opset: str

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def parse_metadata(props: Mapping[str, str]) -> ModelMetadata:
    """Validate and parse ``metadata_props``.

    Raises:
        MetadataError: a required key is missing, JSON is malformed, or the format version is
            not one this server understands.
    """
    fmt = props.get(FORMAT_KEY)
    if fmt not in SUPPORTED_FORMATS:
        raise MetadataError(
            f"not a resnet-server model (metadata {FORMAT_KEY!r} is {fmt!r}); "
            "export it with `python -m export`"
        )

    def get(key: str) -> str:
        try:
            return props[key]
        except KeyError:
            raise MetadataError(f"model metadata lacks {key!r}") from None

    def get_json(key: str) -> Any:
        try:
            return json.loads(get(key))
        except json.JSONDecodeError as e:
            raise MetadataError(f"model metadata {key!r} is not valid JSON: {e}") from None

    labels = get_json("labels")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise MetadataError("model metadata 'labels' must be a JSON list of strings")
    try:
        preprocessing = Preprocessing.from_dict(get_json("preprocessing"))
    except (KeyError, TypeError, ValueError) as e:
        raise MetadataError(f"model metadata 'preprocessing' is malformed: {e}") from None
    return ModelMetadata(
        architecture=get("architecture"),
        weights=get("weights"),
        weights_source=get("weights_source"),
        weights_detail=props.get("weights_detail", ""),
        weights_sha256=get("weights_sha256"),
        random_weights=get("random_weights") == "true",
        preprocessing=preprocessing,
        accuracy={str(k): float(v) for k, v in get_json("accuracy").items()},
        labels=tuple(labels),
        input_name=get("input_name"),
        input_layout=get("input_layout"),
        input_dtype=get("input_dtype"),
        output_name=get("output_name"),
        precision=props.get("precision", "fp32"),
        project_version=props.get("project_version", "unknown"),
        opset=props.get("opset", ""),
    )
