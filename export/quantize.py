"""Static INT8 quantisation (QDQ) of an exported fp32 file, calibrated on real photos.

ONNX Runtime's ``quantize_static`` inserts QuantizeLinear/DequantizeLinear pairs with scales
measured by running the fp32 file on calibration samples. QDQ is the format both engines run
as integer arithmetic: ONNX Runtime's CPU provider fuses the pairs into QLinearConv, the
OpenVINO runtime turns them into its low-precision convolutions. The default recipe and the
alternatives measured against it are in docs/PRECISION.md (``python -m export.recipe_bench``).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnxruntime import quantization as q

from export.onnx_export import INPUT_NAME

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """One way to quantise. Names are ONNX Runtime's (``CalibrationMethod``, ``QuantType``).

    ``op_types``: node types to quantise (None: ONNX Runtime's default list).
    ``options``: ``extra_options`` of ``quantize_static`` (e.g. ``ActivationSymmetric``).
    """

    method: str = "MinMax"
    per_channel: bool = True
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    reduce_range: bool = False
    op_types: tuple[str, ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """JSON-ready, for the ``calibration`` metadata and reports."""
        d = asdict(self)
        d["op_types"] = list(self.op_types) if self.op_types is not None else "default"
        return d


#: The recipe chosen by measurement (docs/PRECISION.md): MinMax, per-channel, U8S8 with 7-bit
#: weights (no saturation in AVX2's 16-bit multiply-adds), and float logits. ONNX Runtime
#: would otherwise quantise the output of the last Gemm too: logits rounded to 256 levels and
#: clipped to the range seen in calibration, so an input with a larger logit than any
#: calibration photo loses its top classes (ResNet50: relative logit error 0.54 -> 0.27).
DEFAULT_RECIPE = Recipe(reduce_range=True, options={"OpTypesToExcludeOutputQuantization": ["Gemm"]})


class _Samples(q.CalibrationDataReader):  # type: ignore[misc]
    """Feeds the calibrator one sample at a time."""

    def __init__(self, samples: NDArray[np.uint8]) -> None:
        self._it: Iterator[NDArray[np.uint8]] = iter(samples)

    def get_next(self) -> dict[str, NDArray[np.uint8]] | None:
        sample = next(self._it, None)
        return None if sample is None else {INPUT_NAME: sample[None]}


def quantize(
    fp32_path: Path, out_path: Path, samples: NDArray[np.uint8], recipe: Recipe = DEFAULT_RECIPE
) -> onnx.ModelProto:
    """Write the INT8 QDQ version of ``fp32_path`` to ``out_path``; return it.

    ``samples``: uint8 ``[N, crop, crop, 3]`` calibration inputs. The metadata of the fp32
    file is not carried over (the caller writes the INT8 file's own).
    Raises ``ValueError`` for an unknown method or type name in ``recipe``.
    """
    try:
        method = q.CalibrationMethod[recipe.method]
        activation = q.QuantType[recipe.activation_type]
        weight = q.QuantType[recipe.weight_type]
    except KeyError as e:
        raise ValueError(f"unknown quantisation setting {e} in {recipe}") from None
    # Not CalibMaxIntermediateOutputs: in onnxruntime 1.32 MinMaxCalibrater.collect_data
    # clears the stored outputs when that count is reached *without* merging their ranges, so
    # all but the last few samples would be ignored. Memory: ~0.1 GB per ResNet50 sample.
    options = dict(recipe.options)
    with tempfile.TemporaryDirectory() as tmp:
        # The calibrator writes its augmented model next to this path, never into models/.
        staged = Path(tmp) / "int8.onnx"
        q.quantize_static(
            str(fp32_path),
            str(staged),
            _Samples(samples),
            quant_format=q.QuantFormat.QDQ,
            op_types_to_quantize=recipe.op_types,
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            activation_type=activation,
            weight_type=weight,
            calibrate_method=method,
            calibration_providers=["CPUExecutionProvider"],
            extra_options=options,
        )
        model = onnx.load(str(staged))
    del model.metadata_props[:]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return model
