"""ONNX Runtime sessions for one model: provider choice and check, threads, warm-up, run.

Everything here blocks; callers run it in a thread (load in the lifespan, ``run`` through
each instance's single-thread executor).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .modelmeta import ModelMetadata, parse_metadata
from .settings import Settings

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class ProviderReport:
    """What was asked for and what the session actually got."""

    requested: str  # "cuda" or "cpu"
    actual: str  # "cuda" or "cpu": the first provider of the live session
    session_providers: tuple[str, ...]

    @property
    def fallback(self) -> bool:
        return self.requested == "cuda" and self.actual != "cuda"


def requested_provider(settings: Settings) -> str:
    """``auto`` means CUDA when this onnxruntime build offers it, else CPU."""
    if settings.provider == "auto":
        return "cuda" if CUDA in ort.get_available_providers() else "cpu"
    return settings.provider


def _provider_list(requested: str, settings: Settings) -> list[Any]:
    if requested == "cpu":
        return [CPU]
    cuda_options = {
        "device_id": settings.cuda_device_id,
        # HEURISTIC picks a conv algorithm without benchmarking, so the first batch of a new
        # size does not stall for an exhaustive cuDNN search.
        "cudnn_conv_algo_search": "HEURISTIC",
        # Grow the arena by what is requested, not by doubling: bounded memory across sizes.
        "arena_extend_strategy": "kSameAsRequested",
        "do_copy_in_default_stream": True,
    }
    return [(CUDA, cuda_options), CPU]


def _session_options(settings: Settings) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings.threads
    opts.inter_op_num_threads = settings.inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Threads spin-waiting for work burn the cores that preprocessing needs between batches.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class ModelRuntime:
    """One served model: ``instances`` sessions over the same file, and its metadata.

    ``run(instance, images)`` takes uint8 ``[N, H, W, 3]`` (H = W = crop size) and returns
    float32 logits ``[N, num_classes]``.
    """

    def __init__(self, name: str, path: Path, settings: Settings) -> None:
        self.name = name
        self.path = path
        requested = requested_provider(settings)
        providers = _provider_list(requested, settings)
        opts = _session_options(settings)
        self.sessions = [
            ort.InferenceSession(str(path), sess_options=opts, providers=providers)
            for _ in range(settings.instances)
        ]
        first = self.sessions[0]
        self.meta: ModelMetadata = parse_metadata(first.get_modelmeta().custom_metadata_map)
        got = tuple(first.get_providers())
        self.provider = ProviderReport(requested, "cuda" if got[0] == CUDA else "cpu", got)
        if self.provider.fallback:
            log.error(
                "model %s: CUDA was requested but the session runs on %s (providers %s); "
                "check the CUDA/cuDNN libraries and onnxruntime-gpu",
                name, self.provider.actual, got,
            )  # fmt: skip
        self._use_iobinding = self.provider.actual == "cuda"
        crop = self.meta.preprocessing.crop_size
        self.input_shape = (crop, crop, 3)

    @property
    def instances(self) -> int:
        return len(self.sessions)

    def run(self, instance: int, images: np.ndarray) -> np.ndarray:
        """Run one batch on session ``instance``. Raises whatever ONNX Runtime raises."""
        session = self.sessions[instance]
        if self._use_iobinding:
            return self._run_iobinding(session, images)
        out: np.ndarray = session.run([self.meta.output_name], {self.meta.input_name: images})[0]
        return out

    def _run_iobinding(self, session: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
        # Bind the host array directly: ORT copies it to the device once, and the output
        # comes back to host memory without an extra session-managed copy.
        binding = session.io_binding()
        binding.bind_cpu_input(self.meta.input_name, np.ascontiguousarray(images))
        binding.bind_output(self.meta.output_name, "cpu")
        session.run_with_iobinding(binding)
        out: np.ndarray = binding.copy_outputs_to_cpu()[0]
        return out

    def warmup(self, batch_sizes: list[int]) -> float:
        """Run every session once at each batch size; returns seconds spent."""
        start = time.monotonic()
        rng = np.random.default_rng(0)
        for size in batch_sizes:
            images = rng.integers(0, 256, (size, *self.input_shape), dtype=np.uint8)
            for i in range(self.instances):
                self.run(i, images)
        return time.monotonic() - start
