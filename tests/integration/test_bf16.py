"""bf16 variants on every CPU: served where the CPU has bf16 units, never attempted where it
has none, and, being automatic (``bf16_variants=auto``), never fatal: a variant that cannot
run or misses its floors is skipped with its reason while the fp32 model serves. ``on`` stays
strict. Real exports and engines; ``tests.seam_server`` reaches the paths this CPU's own
hardware cannot (its docstring says how)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract.agreement import DEFAULT_FLOORS
from contract.cpuinfo import read_cpuinfo
from server.models.engines import openvino_installed
from tests.conftest import ServerProcess, start_server
from tests.imagegen import jpeg
from tests.integration.test_predict import metric

CPU = read_cpuinfo()
MISS = json.dumps({"bf16": {"max_rel_logit_error": 1e-6}})  # no real bf16 run is that close
pytestmark = pytest.mark.skipif(not openvino_installed(), reason="needs the openvino extra")


@pytest.fixture
def fp32_only(model_dir: Path, tmp_path: Path) -> Path:
    """A model directory holding one fp32 file, resnet18 (as a user's would)."""
    out = tmp_path / "fp32"
    out.mkdir()
    (out / "resnet18.onnx").symlink_to(model_dir / "resnet18.onnx")
    return out


def _models(srv: ServerProcess) -> tuple[dict[str, Any], list[Any]]:
    body = srv.client().get("/models").json()
    return {m["name"]: m for m in body["models"]}, body["skipped_variants"]


def _predict(srv: ServerProcess, name: str, data: bytes) -> list[int]:
    r = srv.client().post(
        f"/predict/{name}?top_k=5", content=data, headers={"content-type": "image/jpeg"}
    )
    assert r.status_code == 200, r.text
    return [p["index"] for p in r.json()["results"][0]["predictions"]]


def test_default_settings_serve_bf16_exactly_where_the_cpu_has_units(
    fp32_only: Path, tmp_path: Path
) -> None:
    srv = start_server(fp32_only, tmp_path, provider="openvino", warmup_batch_sizes="1")
    try:
        models, skipped = _models(srv)
        assert skipped == []
        if not CPU.bf16:  # auto means "where the CPU has the units": not even attempted
            assert set(models) == {"resnet18"}
            assert metric(srv, "resnet_variant_skipped") == 0.0
            return
        assert set(models) == {"resnet18", "resnet18-bf16"}
        bf16 = models["resnet18-bf16"]
        assert (bf16["ready"], bf16["precision"], bf16["file_precision"], bf16["provider"]) == (
            True,
            "bf16",
            "fp32",
            "openvino",
        )
        assert bf16["engine"]["layers_by_precision"] == {"bf16": 21}  # every conv and the fc
        at_load = bf16["agreement"]["at_load"]
        assert at_load["floors"] == DEFAULT_FLOORS["bf16"].to_dict()
        values = at_load["values"]
        assert values["photos"] == 7 and values["top1"] >= 0.7
        assert 0 < values["max_rel_logit_error"] <= DEFAULT_FLOORS["bf16"].max_rel_logit_error
        data = jpeg(500, 375, seed=11)
        before = metric(srv, "resnet_inference_count_total", model="resnet18-bf16")
        top_fp32, top_bf16 = _predict(srv, "resnet18", data), _predict(srv, "resnet18-bf16", data)
        assert len(set(top_fp32) & set(top_bf16)) >= 3
        # v2 on the same variant, binary UINT8 in and logits out.
        crop = np.random.default_rng(3).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "images",
                        "datatype": "UINT8",
                        "shape": [2, 224, 224, 3],
                        "parameters": {"binary_data_size": crop.size},
                    }
                ],
                "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
            }
        ).encode()
        r = srv.client().post(
            "/v2/models/resnet18-bf16/infer",
            content=header + crop.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert r.status_code == 200, r.text
        length = int(r.headers["Inference-Header-Content-Length"])
        assert json.loads(r.content[:length])["outputs"][0]["shape"] == [2, 1000]
        logits = np.frombuffer(r.content[length:], "<f4").reshape(2, 1000)
        assert np.isfinite(logits).all()
        assert metric(srv, "resnet_inference_count_total", model="resnet18-bf16") == before + 3
        labels = {"model": "resnet18-bf16", "precision": "bf16", "provider": "openvino"}
        assert metric(srv, "resnet_model_info", **labels) == 1.0
    finally:
        srv.stop()


def test_an_automatic_variant_that_cannot_serve_is_skipped_not_fatal(
    fp32_only: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With bf16 units: a real run that misses the (forced) floors. Without: the claimed units
    # make the server ask OpenVINO for bf16, which compiles f32 here, and the engine refuses.
    monkeypatch.setenv("SEAM_CLAIM_BF16", "1")
    srv = start_server(
        fp32_only,
        tmp_path,
        module="tests.seam_server",
        provider="openvino",
        agreement_floors=MISS,
        warmup_batch_sizes="1",
    )
    try:
        models, skipped = _models(srv)
        assert set(models) == {"resnet18"} and models["resnet18"]["ready"] is True
        assert len(skipped) == 1
        variant = skipped[0]
        assert (variant["name"], variant["precision"], variant["provider"]) == (
            "resnet18-bf16",
            "bf16",
            "openvino",
        )
        assert variant["to_serve_it"].startswith("bf16_variants=on requires it")
        if CPU.bf16:
            assert variant["reason"] == "agreement"
            assert "misses its agreement floors on 7 verification photos" in variant["message"]
            assert variant["floors"]["max_rel_logit_error"] == 1e-6
            assert variant["agreement"]["photos"] == 7
            assert variant["agreement"]["max_rel_logit_error"] > 1e-6
        else:
            assert variant["reason"] == "engine"
            assert "bf16 was requested but OpenVINO runs its convolutions in" in variant["message"]
            assert variant["agreement"] is None and variant["floors"] is None
        reason = variant["reason"]
        assert metric(srv, "resnet_variant_skipped", model="resnet18-bf16", reason=reason) == 1.0
        assert (
            "WARNING server.models.repository: model resnet18-bf16 (an automatic bf16 variant, "
            "bf16_variants=auto) is not served: " in srv.log
        ), srv.log
        r = srv.client().post(
            "/predict/resnet18-bf16", content=jpeg(64, 64), headers={"content-type": "image/jpeg"}
        )
        assert r.status_code == 404
        assert r.json() == {
            "error": f"model 'resnet18-bf16' is not served on this machine ({reason}: see "
            "skipped_variants in GET /models); served models: ['resnet18']",
            "code": "unknown_model",
        }
        assert srv.client().get("/v2/models/resnet18-bf16").status_code == 404
        assert len(_predict(srv, "resnet18", jpeg(300, 200, seed=2))) == 5
        assert srv.client().get("/readyz").json() == {"status": "ready"}
    finally:
        srv.stop()


def test_bf16_variants_on_stays_strict(
    fp32_only: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEAM_CLAIM_BF16", "1")
    srv = start_server(
        fp32_only,
        tmp_path,
        module="tests.seam_server",
        wait=False,
        provider="openvino",
        bf16_variants="on",
        agreement_floors=MISS,
    )
    assert srv.exit_status(120) == 1
    assert "model load failed: " in srv.log
    if CPU.bf16:
        assert "model resnet18-bf16 (bf16 on openvino" in srv.log
        assert "misses its agreement floors" in srv.log
    else:
        assert "bf16 was requested but OpenVINO runs its convolutions in" in srv.log


def test_provider_auto_falls_back_for_a_model_the_user_named(
    fp32_only: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEAM_OPENVINO_FAILS", "1")
    srv = start_server(
        fp32_only, tmp_path, module="tests.seam_server", provider="auto", warmup_batch_sizes="1"
    )
    try:
        models, skipped = _models(srv)
        assert set(models) == {"resnet18"}
        info = models["resnet18"]
        assert (info["ready"], info["provider"], info["precision"]) == (True, "cpu", "fp32")
        assert info["warnings"] == [
            "provider=auto chose openvino, which cannot serve it (OpenVINO cannot compile this "
            "model (injected by tests.seam_server)); serving it on ONNX Runtime's CPU provider "
            "instead"
        ]
        assert (
            "WARNING server.models.repository: model resnet18: provider=auto chose openvino"
            in srv.log
        )
        # The automatic bf16 variant needs OpenVINO: skipped, not moved to another engine.
        assert [(v["name"], v["reason"]) for v in skipped] == (
            [("resnet18-bf16", "engine")] if CPU.bf16 else []
        )
        assert len(_predict(srv, "resnet18", jpeg(300, 200, seed=4))) == 5
    finally:
        srv.stop()
    # A provider the user named is not replaced.
    srv = start_server(
        fp32_only, tmp_path, module="tests.seam_server", wait=False, provider="openvino"
    )
    assert srv.exit_status(120) == 1
    assert "model load failed: OpenVINO cannot compile this model" in srv.log
