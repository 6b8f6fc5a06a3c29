"""What every peer shares with the server: the engine, preprocessing, the response."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from contract.cpuinfo import available_cpus, read_cpuinfo
from contract.modelmeta import ModelMetadata
from contract.scores import score
from server.models.engines import Engine, EngineOptions, open_engine


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model-path", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads; 0 = CPUs")
    p.add_argument("--provider", default="cpu", choices=["cpu", "openvino", "cuda"])
    p.add_argument("--precision", default=None, help="bf16: run the fp32 file with a bf16 hint")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-timeout-ms", type=float, default=5.0)
    return p.parse_args()


def load(args: argparse.Namespace) -> Engine:
    """The server's engine for ``args.model_path`` (one instance: callers serialise runs)."""
    options = EngineOptions(args.provider, args.precision, args.threads or available_cpus())
    return open_engine(args.model_path, options, read_cpuinfo())


def response(logits: np.ndarray, meta: ModelMetadata, k: int = 5) -> dict[str, Any]:
    """The top-``k`` classes of one row of logits, as the server computes them."""
    top = score(logits[np.newaxis], k)
    return {
        "predictions": [
            {"index": i, "label": meta.labels[i], "probability": p}
            for i, p in zip(top.indices[0].tolist(), top.probabilities[0].tolist(), strict=True)
        ]
    }
