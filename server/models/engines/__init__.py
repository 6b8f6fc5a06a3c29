"""Engines: one exported model file, compiled for one provider and precision, ready to run.

An :class:`Engine` takes uint8 ``[N, H, W, 3]`` crops and returns float32 ``[N, classes]``
logits. Two runtimes sit behind it:

- ONNX Runtime (``cpu``: its default CPU provider; ``cuda``: its CUDA provider), and
- the OpenVINO runtime (``openvino``), which runs fp32, bf16 (the fp32 file with a bf16
  inference-precision hint, where the CPU has bf16 units) and INT8 QDQ files on the CPU's
  matrix units (AMX, AVX-512 VNNI, or AVX2).

Every engine reports what it *actually* got (:class:`EngineReport`), not what was asked for:
the provider the nodes run on, and the precision the convolutions execute in. Opening an
engine that cannot run as asked on this machine raises :class:`EngineUnavailable` with the
fix in the message; everything here blocks (call it in a thread).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from contract.cpuinfo import CpuInfo
from server.models.engines.base import (
    PRECISIONS,
    Engine,
    EngineOptions,
    EngineReport,
    EngineUnavailable,
    served_precision,
)
from server.models.engines.providers import FALLBACK, PROVIDERS, Provider, provider

__all__ = [
    "FALLBACK",
    "PRECISIONS",
    "PROVIDERS",
    "Engine",
    "EngineOptions",
    "EngineReport",
    "EngineUnavailable",
    "Provider",
    "auto_provider",
    "open_engine",
    "openvino_installed",
    "provider",
    "served_precision",
]


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def auto_provider() -> str:
    """CUDA where this onnxruntime build offers it, else OpenVINO where it is installed,
    else ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    if provider("cuda").execution_provider in ort.get_available_providers():
        return "cuda"
    return "openvino" if openvino_installed() else FALLBACK


def open_engine(path: Path, options: EngineOptions, cpu: CpuInfo) -> Engine:
    """Load ``path`` for ``options.provider`` (``cpu``, ``openvino`` or ``cuda``).

    Raises:
        EngineUnavailable: the provider or precision cannot run here (message names the fix).
        MetadataError: the file is not an exported resnet-server model.
    """
    if provider(options.provider).runtime == "openvino":
        from server.models.engines.openvino_engine import OpenVinoEngine

        return OpenVinoEngine(path, options, cpu)
    from server.models.engines.ort_engine import OrtEngine

    return OrtEngine(path, options)
