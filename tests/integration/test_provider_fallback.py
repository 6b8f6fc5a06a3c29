"""CUDA requested on a machine without it: the *session's* providers are checked.

This machine has no GPU, so the fallback is real: onnxruntime's CPU build is asked for
CUDAExecutionProvider and quietly gives a CPU session. No mock is involved.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from contract.cpuinfo import read_cpuinfo
from server.models.engines import EngineOptions, open_engine
from server.models.engines.ort_engine import OrtEngine
from tests.conftest import ServerProcess, start_server
from tests.imagegen import jpeg
from tests.integration.test_predict import metric


@pytest.mark.parametrize("allow", [False, True])
def test_cuda_fallback_is_loud_and_gates_readiness(
    model_dir: Path, tmp_path: Path, allow: bool
) -> None:
    srv = start_server(
        model_dir,
        tmp_path,
        wait=False,
        models="resnet18",
        provider="cuda",
        allow_cpu_fallback=str(allow).lower(),
        warmup_batch_sizes="1",
    )
    try:
        info = _first_loaded_model(srv)
        ready = srv.client().get("/readyz")
        assert info["requested_provider"] == "cuda"
        assert info["provider"] == "cpu"
        assert info["provider_fallback"] is True
        assert info["session_providers"] == ["CPUExecutionProvider"]
        assert info["engine"]["runtime"].startswith("onnxruntime ")
        labels = {
            "model": "resnet18",
            "provider": "cpu",
            "requested_provider": "cuda",
            "fallback": "true",
            "precision": "fp32",
        }
        assert metric(srv, "resnet_model_info", **labels) == 1.0
        assert "model resnet18: cuda was requested but the model runs on cpu" in srv.log
        if allow:
            assert ready.status_code == 200
        else:
            assert ready.status_code == 503
            assert (
                "cuda was requested but the model runs on cpu (allow_cpu_fallback is off)"
                in (ready.json()["error"])
            )
            # ... and inference refuses too: the model is not on its intended provider.
            r = srv.client().post(
                "/predict", content=jpeg(), headers={"content-type": "image/jpeg"}
            )
            assert r.status_code == 503
            assert r.json()["code"] == "not_ready"
            assert "the model runs on cpu" in r.json()["error"]
    finally:
        srv.stop()


def _first_loaded_model(srv: ServerProcess) -> dict[str, object]:
    """Poll /models (it answers while loading) until the model is listed."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            models = srv.client().get("/models").json()["models"]
        except httpx.TransportError:
            models = []
        if models:
            return dict(models[0])
        time.sleep(0.1)
    raise TimeoutError(srv.log)


def test_iobinding_path_gives_the_same_logits(model_dir: Path) -> None:
    """The GPU path uses IO binding; the same binding API runs on a CPU session here."""
    engine = open_engine(
        model_dir / "resnet18.onnx", EngineOptions("cpu", threads=2), read_cpuinfo()
    )
    assert isinstance(engine, OrtEngine)
    x = np.random.default_rng(1).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    plain = engine.run(0, x)
    bound = engine._run_iobinding(engine.sessions[0], x)
    assert bound.shape == (3, 1000) and bound.dtype == np.float32
    np.testing.assert_array_equal(plain, bound)
