"""What every peer shares with the server: session creation, preprocessing, the response."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from server.classify import top_k
from server.modelmeta import ModelMetadata, parse_metadata
from server.runtime import _session_options
from server.settings import Settings


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model-path", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads; 0 = CPUs")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-timeout-ms", type=float, default=5.0)
    return p.parse_args()


def load(path: Path, threads: int) -> tuple[ort.InferenceSession, ModelMetadata]:
    """One CPU session with exactly the server's session options."""
    settings = Settings.model_validate({"model_dir": path.parent, "intra_op_threads": threads})
    session = ort.InferenceSession(
        str(path), sess_options=_session_options(settings), providers=["CPUExecutionProvider"]
    )
    return session, parse_metadata(session.get_modelmeta().custom_metadata_map)


def response(logits: np.ndarray, meta: ModelMetadata, k: int = 5) -> dict[str, Any]:
    """The top-``k`` classes as the server computes them (softmax over all classes)."""
    preds = top_k(logits, k, meta.labels)
    return {
        "predictions": [
            {"index": p.index, "label": p.label, "probability": p.probability} for p in preds
        ]
    }
