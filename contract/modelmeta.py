"""Read the self-describing metadata that ``export`` writes into an ONNX file.

The contract (keys and meanings) is documented in ``docs/DESIGN.md``. This module only
parses and validates it; it needs no ONNX or torch import: callers pass the
``custom_metadata_map`` of an ONNX Runtime session (``session.get_modelmeta()``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from contract.agreement import AgreementRecord

T = TypeVar("T")

FORMAT_KEY = "resnet_server.format"
#: The served name of an fp32 file's bf16 variant is ``<name>-bf16``: the same file run with a
#: bf16 hint, not a file of its own (the server's discovery and the benchmark both read it).
BF16_SUFFIX = "-bf16"
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


@dataclass(frozen=True, eq=False)
class ReferenceLogits:
    """Metadata ``reference``: the fp32 model's logits on the verification photos.

    ``logits``: float32 ``[len(photos), classes]``, computed by the float64 unfused PyTorch
    model on the photos as ``contract.images.preprocess`` prepares them. ``photos``: ``(name, sha256)``
    of each photo, row order; ``computed_with``: how (torch version, dtype).
    """

    photos: tuple[tuple[str, str], ...]
    logits: npt.NDArray[np.float32] = field(repr=False)
    computed_with: str

    def to_dict(self) -> dict[str, Any]:
        data = np.ascontiguousarray(self.logits, dtype="<f4").tobytes()
        return {
            "photos": [{"name": n, "sha256": h} for n, h in self.photos],
            "dtype": "float32",
            "shape": list(self.logits.shape),
            "logits_b64": base64.b64encode(data).decode("ascii"),
            "computed_with": self.computed_with,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReferenceLogits:
        """Raises ``MetadataError`` when the shape, dtype or data do not fit together."""
        photos = tuple((str(p["name"]), str(p["sha256"])) for p in d["photos"])
        shape = tuple(int(x) for x in d["shape"])
        if d.get("dtype") != "float32" or len(shape) != 2 or shape[0] != len(photos):
            raise MetadataError(
                f"reference logits must be float32 [photos, classes] for {len(photos)} photos, "
                f"got {d.get('dtype')} {list(shape)}"
            )
        raw = base64.b64decode(d["logits_b64"], validate=True)
        if len(raw) != 4 * shape[0] * shape[1]:
            raise MetadataError(
                f"reference logits hold {len(raw)} bytes, not {list(shape)} float32"
            )
        logits = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)
        return cls(photos, logits, str(d.get("computed_with", "")))


@dataclass(frozen=True)
class CalibrationRecord:
    """Metadata ``calibration`` of an INT8 file: the quantisation recipe and its photos.

    ``method``: ONNX Runtime calibration method (``MinMax``, ``Entropy``, ``Percentile``);
    ``per_channel``: per-output-channel weight scales; ``activation_type`` /
    ``weight_type``: ``QUInt8`` / ``QInt8``; ``reduce_range``: 7-bit weights;
    ``quant_format``: ``QDQ``; ``photos``: distinct photos, ``samples``: crops fed to the
    calibrator; ``source``: where the photos came from; ``options``: any other setting.
    """

    method: str
    per_channel: bool
    activation_type: str
    weight_type: str
    reduce_range: bool
    quant_format: str
    photos: int
    samples: int
    source: str
    options: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "per_channel": self.per_channel,
            "activation_type": self.activation_type,
            "weight_type": self.weight_type,
            "reduce_range": self.reduce_range,
            "quant_format": self.quant_format,
            "photos": self.photos,
            "samples": self.samples,
            "source": self.source,
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CalibrationRecord:
        return cls(
            method=str(d["method"]),
            per_channel=bool(d["per_channel"]),
            activation_type=str(d["activation_type"]),
            weight_type=str(d["weight_type"]),
            reduce_range=bool(d["reduce_range"]),
            quant_format=str(d["quant_format"]),
            photos=int(d["photos"]),
            samples=int(d["samples"]),
            source=str(d["source"]),
            options=dict(d.get("options", {})),
        )


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
    reference: ReferenceLogits | None = None
    """Reference logits on the verification photos (files exported before it: None)."""
    agreement: AgreementRecord | None = None
    """Agreement measured at export (reduced precisions only)."""
    calibration: CalibrationRecord | None = None
    """INT8 calibration recipe (int8 only)."""

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
        reference=_optional(props, "reference", ReferenceLogits.from_dict),
        agreement=_optional(props, "agreement", AgreementRecord.from_dict),
        calibration=_optional(props, "calibration", CalibrationRecord.from_dict),
    )


def _optional(props: Mapping[str, str], key: str, parse: Callable[[Any], T]) -> T | None:
    """Parse an optional JSON key; None when absent, MetadataError naming it when malformed."""
    if key not in props:
        return None
    try:
        return parse(json.loads(props[key]))
    except MetadataError as e:
        raise MetadataError(f"model metadata {key!r} is malformed: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # JSONDecodeError included
        raise MetadataError(
            f"model metadata {key!r} is malformed: {type(e).__name__} {e}"
        ) from None
