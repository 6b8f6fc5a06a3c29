"""The response cache on a real server: hits (identical answers, zero timings, metrics and v2
statistics), what the key is sensitive to, sharing across /predict, v2 and gRPC, per-model
opt-in, eviction by bytes, and invalidation on a reload (docs/VERSIONS.md)."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as tgrpc

from server.flow.respcache import ENTRY_OVERHEAD
from tests.conftest import ServerProcess, start_server, versioned_dir
from tests.imagegen import jpeg

JPEG = {"content-type": "image/jpeg"}
A, B, C = jpeg(seed=3), jpeg(seed=4), jpeg(seed=5)


def entry_bytes(k: int, n: int = 1) -> int:
    """What one cached answer of ``n`` images ranked to ``k`` counts (logits, indices,
    probabilities, as the runner makes them, plus the bookkeeping)."""
    arrays = (
        np.zeros((n, 1000), np.float32),
        np.zeros((n, k), np.int64),
        np.zeros((n, k), np.float64),
    )
    return sum(sys.getsizeof(a) for a in arrays) + ENTRY_OVERHEAD


def metric(c: httpx.Client, sample: str) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def counts(c: httpx.Client, model: str = "resnet18") -> tuple[int, int, int]:
    label = f'{{model="{model}"}}'
    return (
        int(metric(c, f"resnet_cache_hits_total{label}")),
        int(metric(c, f"resnet_cache_misses_total{label}")),
        int(metric(c, f"resnet_cache_evictions_total{label}")),
    )


def predict(c: httpx.Client, image: bytes, path: str = "/predict/resnet18", k: int = 5) -> dict:  # type: ignore[type-arg]
    r = c.post(path, params={"top_k": k}, content=image, headers=JPEG)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _start(root: Path, tmp_path: Path, **settings: object) -> ServerProcess:
    return start_server(
        root,
        tmp_path,
        max_batch_size=4,
        warmup_batch_sizes="1,4",
        response_cache_models="resnet18",
        **settings,
    )


def test_hit_path_key_sensitivity_and_protocols(model_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (root / "resnet18.onnx").symlink_to(model_dir / "resnet18.onnx")
    (root / "uncached.onnx").symlink_to(model_dir / "resnet18.onnx")
    srv = _start(root, tmp_path, response_cache_bytes=1_000_000)
    try:
        c = srv.client()
        first = predict(c, A)
        assert counts(c) == (0, 1, 0)
        assert metric(c, "resnet_cache_bytes") == entry_bytes(5)
        second = predict(c, A)
        assert counts(c) == (1, 1, 0)
        assert second["model_version"] == first["model_version"] == "1"
        assert second["results"][0]["predictions"] == first["results"][0]["predictions"]
        assert second["results"][0]["timing"] == {
            "queue_ms": 0.0,
            "preprocess_ms": 0.0,
            "inference_ms": 0.0,
            "batch_size": 0,
        }
        assert first["results"][0]["timing"]["batch_size"] >= 1
        # Another top_k, other bytes, several images: other keys.
        three = predict(c, A, k=3)
        assert three["results"][0]["predictions"] == first["results"][0]["predictions"][:3]
        assert counts(c) == (1, 2, 0)
        predict(c, B)
        assert counts(c) == (1, 3, 0)
        r = c.post("/predict/resnet18", files=[("a", A), ("b", B)])
        assert r.status_code == 200
        assert counts(c) == (1, 4, 0)
        r = c.post("/predict/resnet18", files=[("a", A), ("b", B)])
        assert [x["timing"]["batch_size"] for x in r.json()["results"]] == [0, 0]
        assert counts(c) == (2, 4, 0)
        # v2 REST with classification 5: the same images asked the same way, so a hit.
        body = {
            "inputs": [
                {
                    "name": "image_bytes",
                    "shape": [1, 1],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(A).decode()],
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"classification": 5}}],
        }
        out = c.post("/v2/models/resnet18/infer", json=body).json()
        assert counts(c) == (3, 4, 0)
        best = out["outputs"][0]["data"][0].split(":")
        assert int(best[1]) == first["results"][0]["predictions"][0]["index"]
        # gRPC too.
        triton = tgrpc.InferenceServerClient(srv.grpc_url)
        try:
            arr = np.array([A], dtype=object).reshape(-1, 1)
            inp = tgrpc.InferInput("image_bytes", list(arr.shape), "BYTES")
            inp.set_data_from_numpy(arr)
            res = triton.infer(
                "resnet18", [inp], outputs=[tgrpc.InferRequestedOutput("logits", class_count=5)]
            )
            assert res.as_numpy("logits")[0][0].decode() == out["outputs"][0]["data"][0]
        finally:
            triton.close()
        assert counts(c) == (4, 4, 0)
        stats = c.get("/v2/models/resnet18/stats").json()["model_stats"][0]["inference_stats"]
        assert (stats["cache_hit"]["count"], stats["cache_miss"]["count"]) == (4, 4)
        assert stats["cache_hit"]["ns"] > 0 and stats["cache_miss"]["ns"] > 0
        # A model not opted in: never looked up.
        predict(c, A, "/predict/uncached")
        predict(c, A, "/predict/uncached")
        assert counts(c, "uncached") == (0, 0, 0)
    finally:
        srv.stop()


def test_eviction_by_bytes(model_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (root / "resnet18.onnx").symlink_to(model_dir / "resnet18.onnx")
    # Room for two answers ranked to 5, not three.
    srv = _start(root, tmp_path, response_cache_bytes=2 * entry_bytes(5) + 100)
    try:
        c = srv.client()
        for image in (A, B):
            predict(c, image)
        assert counts(c) == (0, 2, 0)
        predict(c, A)  # A is now the most recently used
        predict(c, C)  # evicts B
        assert counts(c) == (1, 3, 1)
        assert metric(c, "resnet_cache_bytes") == 2 * entry_bytes(5)
        predict(c, A)
        assert counts(c) == (2, 3, 1)
        predict(c, B)  # a miss again (evicts C)
        assert counts(c) == (2, 4, 2)
        # An answer larger than the whole cache is not stored (and evicts nothing).
        predict(c, A, k=1000)
        assert counts(c) == (2, 5, 2)
        assert metric(c, "resnet_cache_bytes") == 2 * entry_bytes(5)
    finally:
        srv.stop()


def test_reload_drops_the_old_versions_entries(
    model_dir: Path, resnet18_seed1: Path, tmp_path: Path
) -> None:
    root = versioned_dir(tmp_path, {1: model_dir / "resnet18.onnx"})
    srv = _start(root, tmp_path, response_cache_bytes=1_000_000, model_control="explicit")
    try:
        c = srv.client()
        v1 = predict(c, A)
        predict(c, A)
        assert counts(c) == (1, 1, 0)
        assert metric(c, "resnet_cache_bytes") == entry_bytes(5)
        (root / "resnet18" / "2").mkdir()
        (root / "resnet18" / "2" / "model.onnx").symlink_to(resnet18_seed1)
        assert c.post("/v2/repository/models/resnet18/load").status_code == 200
        assert metric(c, "resnet_cache_bytes") == 0
        v2 = predict(c, A)
        assert counts(c) == (1, 2, 0)
        assert v2["model_version"] == "2"
        assert v2["results"][0]["predictions"] != v1["results"][0]["predictions"]
        assert predict(c, A)["results"][0]["predictions"] == v2["results"][0]["predictions"]
        assert counts(c) == (2, 2, 0)
    finally:
        srv.stop()


def test_cache_enabled_by_the_model_config_file(model_dir: Path, tmp_path: Path) -> None:
    root = versioned_dir(tmp_path, {1: model_dir / "resnet18.onnx"})
    (root / "resnet18" / "config.json").write_text('{"response_cache": {"enable": true}}')
    srv = start_server(
        root, tmp_path, max_batch_size=4, warmup_batch_sizes="1,4", response_cache_bytes=1_000_000
    )
    try:
        c = srv.client()
        predict(c, A)
        predict(c, A)
        assert counts(c) == (1, 1, 0)
    finally:
        srv.stop()
