"""OpenVINO runtime engine: the exported ONNX file compiled for the CPU plugin.

Why the OpenVINO runtime itself and not ONNX Runtime's OpenVINO execution-provider plugin
(``onnxruntime-ep-openvino``): the plugin offers a device only when the hardware vendor id is
Intel's (``ov_factory.cc``: ``if (VendorId(&device) != vendor_id_) continue; // Not an Intel
Device``), so on an AMD EPYC it registers and then lists no device at all, while the
runtime's CPU plugin serves both vendors with the same kernels. docs/PRECISION.md has the
measurements.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from contract.cpuinfo import CpuInfo
from contract.modelmeta import parse_metadata
from server.models.engines.base import (
    Engine,
    EngineOptions,
    EngineReport,
    EngineUnavailable,
    served_precision,
)
from server.models.engines.providers import provider

log = logging.getLogger(__name__)

# OpenVINO's runtime precision names -> ours.
_PRECISION = {"u8": "int8", "i8": "int8", "bf16": "bf16", "f32": "fp32", "f16": "fp16"}
_MATMUL_LAYERS = frozenset({"Convolution", "FullyConnected", "MatMul"})


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise EngineUnavailable(
            "provider openvino needs the OpenVINO runtime: pip install 'resnet-server[openvino]' "
            "(or openvino==2026.4.1); or use --provider cpu"
        ) from None
    return openvino


def _layer_precisions(compiled: Any) -> Counter[str]:
    """Convolution / fully-connected layers of the compiled model by execution precision."""
    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in _MATMUL_LAYERS:
            counts[info["runtimePrecision"].astype(str)] += 1
    return counts


def _metadata(model: Any) -> dict[str, str]:
    """The ONNX ``metadata_props``, which OpenVINO keeps in the model's ``framework`` info
    (none for a plain ONNX file: parse_metadata then names what is missing)."""
    if not model.has_rt_info("framework"):
        return {}
    framework = model.get_rt_info()["framework"]
    raw = framework if isinstance(framework, dict) else framework.astype(dict)
    return {str(k): v if isinstance(v, str) else v.astype(str) for k, v in raw.items()}


class OpenVinoEngine(Engine):
    """One compiled model with one stream and one infer request per instance."""

    def __init__(self, path: Path, options: EngineOptions, cpu: CpuInfo) -> None:
        ov = _import_openvino()
        core = ov.Core()
        model = core.read_model(str(path))
        meta = parse_metadata(_metadata(model))
        precision = served_precision(meta.precision, options.precision)
        provider("openvino").check(precision, cpu)
        config = {
            # f32 unless bf16 is asked for: on AMX machines OpenVINO's *default* is bf16, and
            # the fp32 model must stay exact.
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "NUM_STREAMS": options.instances,
            "INFERENCE_NUM_THREADS": options.threads * options.instances,
            # Pinned inference threads would fight the preprocessing threads for cores.
            "ENABLE_CPU_PINNING": False,
        }
        compiled = core.compile_model(model, "CPU", config)
        layers = _layer_precisions(compiled)
        executed = {_PRECISION.get(p, p) for p in layers}
        if precision in ("bf16", "int8") and executed != {precision}:
            raise EngineUnavailable(
                f"{path.name}: {precision} was requested but OpenVINO runs its convolutions in "
                f"{dict(layers)} on this CPU ({cpu.model}); serve the fp32 model instead"
            )
        report = EngineReport(
            requested_provider="openvino",
            provider="openvino",
            requested_precision=precision,
            precision=precision if len(executed) != 1 else executed.pop(),
            runtime=f"openvino {ov.get_version().split('-')[0]}",
            devices=tuple(f"OpenVINO {d}" for d in compiled.get_property("EXECUTION_DEVICES")),
            layers=dict(layers),
        )
        super().__init__(meta, report, options.instances)
        self._compiled = compiled
        self._requests = [compiled.create_infer_request() for _ in range(options.instances)]

    def run(self, instance: int, batch: np.ndarray) -> np.ndarray:
        # share_inputs: no copy of the batch; the output is copied out of the request's
        # buffer (share_outputs=False), which the next run overwrites.
        result = self._requests[instance].infer({0: batch}, share_inputs=True)
        out: np.ndarray = result[0]
        return out
