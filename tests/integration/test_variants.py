"""Precision variants served side by side, each checked at load against its fp32 reference
on the verification photos, on the engine that serves it (real exports, real engines)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from contract.cpuinfo import read_cpuinfo
from contract.photos import photo_batch, verification_photos
from server.models.engines import EngineOptions, open_engine
from tests.conftest import start_server
from tests.imagegen import jpeg
from tests.integration.test_predict import metric

CPU = read_cpuinfo()


@pytest.mark.parametrize("provider", ["openvino", "cpu"])
def test_fp32_and_int8_side_by_side(variant_dir: Path, tmp_path: Path, provider: str) -> None:
    srv = start_server(variant_dir, tmp_path, provider=provider, warmup_batch_sizes="1")
    try:
        models = {m["name"]: m for m in srv.client().get("/models").json()["models"]}
        # bf16_variants=auto adds the fp32 file's bf16 variant where OpenVINO serves on a CPU
        # with bf16 units (tests/integration/test_bf16.py checks it); INT8 files get none.
        bf16 = {"resnet18-bf16"} if provider == "openvino" and CPU.bf16 else set()
        assert set(models) == {"resnet18", "resnet18-int8"} | bf16
        assert srv.client().get("/models").json()["skipped_variants"] == []
        fp32, int8 = models["resnet18"], models["resnet18-int8"]
        assert (fp32["precision"], int8["precision"], int8["file_precision"]) == (
            "fp32",
            "int8",
            "int8",
        )
        assert fp32["provider"] == int8["provider"] == provider
        # Checked at load, on this engine: fp32 within float32 rounding, INT8 above its floors.
        at_load = fp32["agreement"]["at_load"]
        assert at_load["values"]["photos"] == 7 and at_load["values"]["top1"] == 1.0
        assert at_load["values"]["max_rel_logit_error"] < 1e-4
        assert at_load["floors"]["min_top1"] == 1.0
        assert fp32["agreement"]["at_export"] is None  # fp32 files carry no export agreement
        values, floors = (
            int8["agreement"]["at_load"]["values"],
            int8["agreement"]["at_load"]["floors"],
        )
        assert values["top1"] >= floors["min_top1"] == 0.7
        assert values["softmax_l1_max"] <= floors["max_softmax_l1"]
        assert 0 < values["max_rel_logit_error"] <= floors["max_rel_logit_error"]
        recorded = int8["agreement"]["at_export"]
        assert recorded["precision"] == "int8" and recorded["measurements"]
        if provider == "openvino":
            assert int8["engine"]["layers_by_precision"] == {"u8": 21}  # every conv and the fc
        # Both answer, each with its own model; the INT8 top-1 agrees with fp32 on this photo.
        data = jpeg(500, 375, seed=7)
        answers = {}
        for name in models:
            r = srv.client().post(
                f"/predict/{name}?top_k=5", content=data, headers={"content-type": "image/jpeg"}
            )
            assert r.status_code == 200, r.text
            answers[name] = [p["index"] for p in r.json()["results"][0]["predictions"]]
        assert len(set(answers["resnet18"]) & set(answers["resnet18-int8"])) >= 3
        labels = {"model": "resnet18-int8", "precision": "int8", "provider": provider}
        assert metric(srv, "resnet_model_info", **labels) == 1.0
    finally:
        srv.stop()


def _with_reference(src: Path, dst: Path, transform: str) -> Path:
    """A copy of ``src`` whose reference logits are altered (rows rolled: every photo's
    reference becomes another photo's), or removed."""
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    if transform == "remove":
        props.pop("reference")
    else:
        ref = json.loads(props["reference"])
        logits = np.frombuffer(base64.b64decode(ref["logits_b64"]), "<f4").reshape(ref["shape"])
        ref["logits_b64"] = base64.b64encode(np.roll(logits, 1, axis=0).tobytes()).decode()
        props["reference"] = json.dumps(ref)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    dst.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst / "resnet18.onnx"))
    return dst


def test_a_model_that_disagrees_with_its_reference_is_refused(
    variant_dir: Path, tmp_path: Path
) -> None:
    bad = _with_reference(variant_dir / "resnet18.onnx", tmp_path / "bad", "roll")
    srv = start_server(bad, tmp_path, wait=False, provider="cpu")
    assert srv.exit_status(120) == 1
    assert (
        "model load failed: model resnet18 (fp32 on cpu, onnxruntime" in srv.log
        and "misses its agreement floors on 7 verification photos: top-1 agreement" in srv.log
        and "set agreement_check=false to serve it anyway" in srv.log
    ), srv.log
    # The operator's override serves it, and says nothing was checked.
    srv = start_server(
        bad, tmp_path, provider="cpu", agreement_check="false", warmup_batch_sizes="1"
    )
    try:
        info = srv.client().get("/models").json()["models"][0]
        assert info["ready"] is True and info["agreement"] is None
    finally:
        srv.stop()


def test_a_file_without_reference_is_served_unchecked(variant_dir: Path, tmp_path: Path) -> None:
    old = _with_reference(variant_dir / "resnet18.onnx", tmp_path / "old", "remove")
    srv = start_server(old, tmp_path, provider="cpu", warmup_batch_sizes="1")
    try:
        assert srv.client().get("/models").json()["models"][0]["agreement"] is None
    finally:
        srv.stop()


def test_reference_is_what_the_engine_gives_on_the_photos(variant_dir: Path) -> None:
    """The reference in the file is the float64 model on the server's own preprocessing of the
    shipped photos: ONNX Runtime's fp32 answer is within float32 rounding of it."""
    engine = open_engine(
        variant_dir / "resnet18.onnx", EngineOptions("cpu", threads=2), read_cpuinfo()
    )
    reference = engine.meta.reference
    assert reference is not None
    photos = verification_photos()
    assert [(p.name, p.sha256) for p in photos] == list(reference.photos)
    got = engine.run(0, photo_batch(photos, engine.meta.preprocessing))
    scale = float(np.abs(reference.logits).max())
    assert float(np.abs(got - reference.logits).max()) <= 1e-5 * scale
