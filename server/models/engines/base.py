"""What every engine is and reports: :class:`Engine`, :class:`EngineOptions`,
:class:`EngineReport`, :class:`EngineUnavailable` (the runtimes' modules and
:mod:`~server.models.engines.providers` build on these; the package re-exports them)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from contract.modelmeta import ModelMetadata

#: Precisions a served model can have. fp32/fp16/int8 come from the file; bf16 is the fp32
#: file run with a bf16 hint.
PRECISIONS: Final = ("fp32", "bf16", "fp16", "int8")


class EngineUnavailable(RuntimeError):
    """The engine cannot run as requested here (missing package, CPU without the units,
    a precision the provider does not offer). The message names the fix."""


@dataclass(frozen=True)
class EngineReport:
    """What was asked for and what the engine actually runs.

    ``offloaded_nodes``: graph nodes the runtime placed on a provider other than the one
    requested (ONNX Runtime's fallback to its CPU provider). ``layers``: convolution and
    fully-connected layers counted by the precision they execute in (OpenVINO), e.g.
    ``{"u8": 21}`` for a fully quantised ResNet18. ``session_batch_sizes``: batch sizes that
    run on a session of their own (ONNX Runtime's CUDA provider), empty when one session per
    instance takes every size.
    """

    requested_provider: str
    provider: str
    requested_precision: str
    precision: str
    runtime: str
    devices: tuple[str, ...]
    offloaded_nodes: int = 0
    layers: dict[str, int] = field(default_factory=dict)
    session_batch_sizes: tuple[int, ...] = ()

    @property
    def fallback(self) -> bool:
        """True when the model does not run wholly on the requested provider."""
        return self.provider != self.requested_provider or self.offloaded_nodes > 0

    @property
    def fallback_reason(self) -> str:
        if self.provider != self.requested_provider:
            return f"{self.requested_provider} was requested but the model runs on {self.provider}"
        if self.offloaded_nodes:
            return (
                f"{self.offloaded_nodes} nodes fell back from {self.requested_provider} to the "
                "CPU provider"
            )
        return ""

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "devices": list(self.devices),
            "offloaded_nodes": self.offloaded_nodes,
            "layers_by_precision": dict(self.layers),
            "session_batch_sizes": list(self.session_batch_sizes),
        }


class Engine(ABC):
    """A model ready to run: ``instances`` independent executors over one model file.

    ``run(instance, batch)`` may be called concurrently for *different* instances, never
    twice at once for the same one (each has its own thread in the server).
    """

    def __init__(self, meta: ModelMetadata, report: EngineReport, instances: int) -> None:
        self.meta = meta
        self.report = report
        self.instances = instances
        crop = meta.preprocessing.crop_size
        self.input_shape = (crop, crop, 3)

    @abstractmethod
    def run(self, instance: int, batch: np.ndarray) -> np.ndarray:
        """uint8 ``[N, H, W, 3]`` (C-contiguous) -> float32 ``[N, classes]`` logits.

        Raises whatever the runtime raises.
        """

    def warmup(self, batch_sizes: list[int]) -> float:
        """Run every instance once at each batch size; returns seconds spent."""
        start = time.monotonic()
        rng = np.random.default_rng(0)
        for size in batch_sizes:
            batch = rng.integers(0, 256, (size, *self.input_shape), dtype=np.uint8)
            for i in range(self.instances):
                self.run(i, batch)
        return time.monotonic() - start


@dataclass(frozen=True)
class EngineOptions:
    """How to open an engine. ``threads``: intra-op threads of each instance."""

    provider: str
    precision: str | None = None
    """None: the file's own precision; ``bf16``: run an fp32 file with a bf16 hint."""
    threads: int = 1
    instances: int = 1
    cuda_device_id: int = 0
    batch_sizes: tuple[int, ...] = ()
    """Batch sizes that get a session of their own (ONNX Runtime only; the server asks for it
    on CUDA, whose provider re-plans every convolution when the input shape changes)."""


def served_precision(file_precision: str, requested: str | None) -> str:
    """The precision a model will be served in; EngineUnavailable if the file cannot give it."""
    if requested is None or requested == file_precision:
        return file_precision
    if requested == "bf16" and file_precision == "fp32":
        return "bf16"
    raise EngineUnavailable(
        f"a {file_precision} model file cannot be served as {requested}: bf16 is a hint on "
        f"fp32 files; export other precisions with `python -m export ARCH --precision "
        f"{requested}`"
    )
