"""Shared helpers of the v2 suites: a tritonclient for the test server, reference runs,
metric and statistics readers."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess


def client(srv: ServerProcess, concurrency: int = 1) -> triton.InferenceServerClient:
    """A tritonclient HTTP client for ``srv`` (its URL without the scheme)."""
    return triton.InferenceServerClient(srv.url.removeprefix("http://"), concurrency=concurrency)


@cache
def _session(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def direct_logits(model_dir: Path, name: str, images: np.ndarray) -> np.ndarray:
    """ONNX Runtime on the exported file itself: uint8 [N,224,224,3] -> float32 [N,1000]."""
    out: np.ndarray = _session(str(model_dir / f"{name}.onnx")).run(None, {"images": images})[0]
    return out


def labels(model_dir: Path, name: str) -> list[str]:
    meta = _session(str(model_dir / f"{name}.onnx")).get_modelmeta().custom_metadata_map
    return list(json.loads(meta["labels"]))


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)


def images_input(x: np.ndarray, binary: bool = True) -> triton.InferInput:
    inp = triton.InferInput("images", list(x.shape), "UINT8")
    return inp.set_data_from_numpy(x, binary_data=binary)


def bytes_input(images: list[bytes], binary: bool = True) -> triton.InferInput:
    arr = np.array(images, dtype=object).reshape(-1, 1)
    inp = triton.InferInput("image_bytes", list(arr.shape), "BYTES")
    return inp.set_data_from_numpy(arr, binary_data=binary)


def metric(srv: ServerProcess, name: str, **labels: str) -> float:
    """Sum of the /metrics samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for fam in text_string_to_metric_families(srv.client().get("/metrics").text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def stats(srv: ServerProcess, model: str) -> dict[str, Any]:
    r = srv.client().get(f"/v2/models/{model}/stats")
    assert r.status_code == 200, r.text
    (entry,) = r.json()["model_stats"]
    assert entry["name"] == model and entry["version"] == "1"
    return dict(entry)
