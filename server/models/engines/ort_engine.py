"""ONNX Runtime engine: its CPU provider, or its CUDA provider with IO binding."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnxruntime as ort

from contract.modelmeta import parse_metadata
from server.models.engines.base import Engine, EngineOptions, EngineReport, served_precision
from server.models.engines.providers import BY_EXECUTION_PROVIDER
from server.models.engines.providers import provider as _provider

log = logging.getLogger(__name__)

CUDA: Final = "CUDAExecutionProvider"
CPU: Final = "CPUExecutionProvider"


def provider_list(provider: str, cuda_device_id: int = 0) -> list[Any]:
    """ONNX Runtime providers for ``cpu`` or ``cuda`` (CPU listed last as ORT requires)."""
    if not _provider(provider).gpu:
        return [CPU]
    cuda_options = {
        "device_id": cuda_device_id,
        # HEURISTIC picks a conv algorithm without benchmarking, so the first batch of a new
        # size does not stall for an exhaustive cuDNN search.
        "cudnn_conv_algo_search": "HEURISTIC",
        # Grow the arena by what is requested, not by doubling: bounded memory across sizes.
        "arena_extend_strategy": "kSameAsRequested",
        "do_copy_in_default_stream": True,
        # TF32 (on by default in ONNX Runtime's CUDA provider) rounds fp32 convolutions to a
        # 10-bit mantissa. Measured on an H200: ResNet50 1.9x faster, but relative logit error
        # 2e-2 instead of 2e-5, as far from fp32 as the fp16 file, which is faster still
        # (docs/BENCHMARKS.md, "GPU"). An "fp32" model runs in fp32.
        "use_tf32": 0,
    }
    return [(CUDA, cuda_options), CPU]


def session_options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Threads spin-waiting for work burn the cores that preprocessing needs between batches.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Lets the report count nodes that fell back from CUDA to the CPU provider.
    opts.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    return opts


def _nodes_by_provider(session: ort.InferenceSession) -> Counter[str]:
    counts: Counter[str] = Counter()
    for subgraph in session.get_provider_graph_assignment_info():
        counts[subgraph.ep_name] += len(subgraph.get_nodes())
    return counts


class OrtEngine(Engine):
    """``instances`` ONNX Runtime sessions over the same file, and with ``batch_sizes``, per
    instance one more session for each of those sizes.

    Why sessions per size: ONNX Runtime's CUDA provider keeps the convolution plan of the last
    input shape only. Measured on an H200 (docs/BENCHMARKS.md, "GPU"): ResNet50 fp32 batches
    alternating between 32 and 64 rows took 100 ms a run against 13 and 22 ms each alone
    (fp16: 271 ms against 5 and 10), so a session that sees every batch size re-plans on
    almost every batch. A session that only ever sees one shape never does.
    """

    def __init__(self, path: Path, options: EngineOptions) -> None:
        providers = provider_list(options.provider, options.cuda_device_id)
        opts = session_options(options.threads)
        sessions = [
            ort.InferenceSession(str(path), sess_options=opts, providers=providers)
            for _ in range(options.instances)
        ]
        meta = parse_metadata(sessions[0].get_modelmeta().custom_metadata_map)
        precision = served_precision(meta.precision, options.precision)
        traits = _provider(options.provider)
        traits.check(precision, None)
        got = tuple(sessions[0].get_providers())
        requested_ep = traits.execution_provider or CPU
        # Only where the requested provider really runs: a CUDA request that fell back to
        # the CPU gains nothing from them.
        sizes = tuple(sorted(set(options.batch_sizes))) if got[0] == requested_ep else ()
        self._by_size = [
            {
                n: ort.InferenceSession(str(path), sess_options=opts, providers=providers)
                for n in sizes
            }
            for _ in range(options.instances)
        ]
        nodes = _nodes_by_provider(sessions[0])
        report = EngineReport(
            requested_provider=options.provider,
            provider=BY_EXECUTION_PROVIDER.get(got[0], got[0]),
            requested_precision=precision,
            precision=precision,
            runtime=f"onnxruntime {ort.__version__}",
            devices=got,
            offloaded_nodes=sum(n for ep, n in nodes.items() if ep != requested_ep)
            if got[0] == requested_ep
            else 0,
            session_batch_sizes=sizes,
        )
        super().__init__(meta, report, options.instances)
        self.sessions = sessions
        self._use_iobinding = _provider(report.provider).io_binding

    def run(self, instance: int, batch: np.ndarray) -> np.ndarray:
        session = self._by_size[instance].get(len(batch), self.sessions[instance])
        if self._use_iobinding:
            return self._run_iobinding(session, batch)
        out: np.ndarray = session.run([self.meta.output_name], {self.meta.input_name: batch})[0]
        return out

    def _run_iobinding(self, session: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
        # Bind the host array directly: ORT copies it to the device once, and the output
        # comes back to host memory without an extra session-managed copy.
        binding = session.io_binding()
        binding.bind_cpu_input(self.meta.input_name, np.ascontiguousarray(batch))
        binding.bind_output(self.meta.output_name, "cpu")
        session.run_with_iobinding(binding)
        out: np.ndarray = binding.copy_outputs_to_cpu()[0]
        return out
