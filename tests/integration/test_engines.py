"""Engines on this machine's real CPU: ONNX Runtime's CPU provider and the OpenVINO runtime.

Nothing is mocked. Where a behaviour depends on the CPU (bf16 units), the test reads the CPU's
flags and checks the behaviour this CPU must show.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from contract.cpuinfo import read_cpuinfo
from contract.images.preprocess import preprocess
from server.models.engines import EngineOptions, EngineUnavailable, open_engine, served_precision
from server.models.fidelity import AgreementError, check_agreement, run_in_batches_of
from server.models.repository import discover
from server.settings import Settings
from tests.conftest import start_server
from tests.imagegen import jpeg
from tests.integration.test_predict import metric

CPU = read_cpuinfo()


def _crops(n: int = 4) -> np.ndarray:
    """Crops of photo-like JPEGs, as the server preprocesses them: uint8 [n, 224, 224, 3]."""
    from contract.modelmeta import Preprocessing

    spec = Preprocessing(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return np.stack([preprocess(jpeg(480, 360, seed=s), spec) for s in range(n)])


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_openvino_fp32_agrees_with_onnxruntime(model_dir: Path, name: str) -> None:
    path = model_dir / f"{name}.onnx"
    ort_engine = open_engine(path, EngineOptions("cpu", threads=2), CPU)
    ov_engine = open_engine(path, EngineOptions("openvino", threads=2), CPU)
    x = _crops()
    ref, got = ort_engine.run(0, x), ov_engine.run(0, x)
    assert got.dtype == np.float32 and got.shape == (4, 1000)
    # Both are float32 implementations of the same graph: their difference is float32
    # rounding (measured: 6e-6 / 6e-5 for logits of about +-180), far below 1e-5 of the scale.
    assert float(np.abs(got - ref).max()) <= 1e-5 * float(np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_batch_sizes_get_sessions_of_their_own(model_dir: Path) -> None:
    # The server asks for this on CUDA only (no GPU here): the same code on the CPU provider.
    path = model_dir / "resnet18.onnx"
    general = open_engine(path, EngineOptions("cpu", threads=2), CPU)
    engine = open_engine(
        path, EngineOptions("cpu", threads=2, instances=2, batch_sizes=(4, 2)), CPU
    )
    assert engine.report.session_batch_sizes == (2, 4)
    assert engine.report.describe()["session_batch_sizes"] == [2, 4]
    assert general.report.session_batch_sizes == ()
    by_size = engine._by_size  # type: ignore[attr-defined]
    assert [sorted(d) for d in by_size] == [[2, 4], [2, 4]]
    assert len({id(s) for d in by_size for s in d.values()} | {id(s) for s in engine.sessions}) == 6
    calls: list[int] = []
    for d in by_size:  # record which session answers which size
        for n, sess in d.items():
            d[n] = _Spy(sess, n, calls)
    x = _crops(4)
    for rows in (2, 4, 3):
        assert np.array_equal(engine.run(1, x[:rows]), general.run(0, x[:rows]))
    assert calls == [2, 4]  # 3 rows: the instance's general session


class _Spy:
    def __init__(self, session: object, size: int, calls: list[int]) -> None:
        self._session, self._size, self._calls = session, size, calls

    def __getattr__(self, name: str) -> object:
        if name == "run":
            self._calls.append(self._size)
        return getattr(self._session, name)


def test_the_agreement_check_runs_on_every_session_per_size(model_dir: Path) -> None:
    # Sessions per size are what traffic runs on under CUDA (asked for there only; no GPU
    # here): the same code on the CPU provider, one session made to answer wrong.
    path = model_dir / "resnet18.onnx"
    engine = open_engine(
        path, EngineOptions("cpu", threads=2, instances=2, batch_sizes=(1, 4, 16)), CPU
    )
    calls: list[int] = []
    for d in engine._by_size:  # type: ignore[attr-defined]
        for n, sess in d.items():
            d[n] = _Spy(sess, n, calls)
    checked = check_agreement("resnet18", engine)
    assert checked is not None and checked.size_sessions_checked == 6
    assert checked.describe()["size_sessions_checked"] == 6
    # 7 photos: 7 batches of 1, 2 of 4 (the last filled up), 1 of 16, on each instance
    assert sorted(calls) == [1] * 14 + [4] * 4 + [16] * 2
    x = _crops(7)
    general = open_engine(path, EngineOptions("cpu", threads=2), CPU)
    np.testing.assert_allclose(
        run_in_batches_of(engine, 1, x, 4), general.run(0, x), rtol=1e-4, atol=1e-4
    )
    engine._by_size[1][4] = _Wrong(engine._by_size[1][4])  # type: ignore[attr-defined]
    with pytest.raises(AgreementError, match=r"\(instance 1, batch 4\) misses its agreement"):
        check_agreement("resnet18", engine)


class _Wrong:
    """A session whose logits come out shifted by one class."""

    def __init__(self, session: object) -> None:
        self._session = session

    def run(self, *args: object) -> list[np.ndarray]:
        return [np.roll(out, 1, axis=1) for out in self._session.run(*args)]  # type: ignore[attr-defined]


def test_openvino_reports_what_runs(model_dir: Path) -> None:
    engine = open_engine(model_dir / "resnet18.onnx", EngineOptions("openvino", threads=1), CPU)
    r = engine.report
    assert (r.provider, r.requested_provider, r.precision, r.fallback) == (
        "openvino",
        "openvino",
        "fp32",
        False,
    )
    assert r.runtime.startswith("openvino 2026.")
    assert r.devices == ("OpenVINO CPU",)
    assert r.layers == {"f32": 21}  # ResNet18: 20 convolutions + the classifier


def test_bf16_runs_only_where_the_cpu_has_it(model_dir: Path) -> None:
    path = model_dir / "resnet18.onnx"
    if not CPU.bf16:
        with pytest.raises(EngineUnavailable, match=r"bf16 needs a CPU with bf16 units") as e:
            open_engine(path, EngineOptions("openvino", "bf16"), CPU)
        assert "serve fp32, or an INT8 model" in str(e.value)
        return
    engine = open_engine(path, EngineOptions("openvino", "bf16", threads=2), CPU)
    assert engine.report.precision == "bf16"
    assert set(engine.report.layers) == {"bf16"}


def test_bf16_is_refused_by_onnxruntime(model_dir: Path) -> None:
    with pytest.raises(EngineUnavailable, match="bf16 runs on the OpenVINO runtime only"):
        open_engine(model_dir / "resnet18.onnx", EngineOptions("cpu", "bf16"), CPU)


def test_precision_a_file_cannot_give() -> None:
    assert served_precision("fp32", None) == "fp32"
    assert served_precision("fp32", "bf16") == "bf16"
    assert served_precision("int8", None) == "int8"
    with pytest.raises(EngineUnavailable, match="a int8 model file cannot be served as bf16"):
        served_precision("int8", "bf16")


def test_missing_openvino_names_the_fix(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(EngineUnavailable, match=r"pip install 'resnet-server\[openvino\]'"):
        open_engine(model_dir / "resnet18.onnx", EngineOptions("openvino"), CPU)


def test_discover_adds_bf16_variants_of_fp32_files(model_dir: Path, tmp_path: Path) -> None:
    settings = Settings(model_dir=model_dir)
    assert {n: s.precision for n, s in discover(settings, bf16=True).items()} == {
        "resnet18": None,
        "resnet50": None,
        "resnet18-bf16": "bf16",
        "resnet50-bf16": "bf16",
    }
    assert set(discover(settings, bf16=False)) == {"resnet18", "resnet50"}
    named = Settings(model_dir=model_dir, models=["resnet50-bf16"])
    spec = discover(named)["resnet50-bf16"]
    assert (spec.path.name, spec.precision) == ("resnet50.onnx", "bf16")
    with pytest.raises(FileNotFoundError, match=r"no model file for \['resnet34-bf16'\]"):
        discover(Settings(model_dir=model_dir, models=["resnet34-bf16"]))


def test_server_on_openvino(model_dir: Path, tmp_path: Path) -> None:
    srv = start_server(
        model_dir, tmp_path, models="resnet18", provider="openvino", warmup_batch_sizes="1,2"
    )
    try:
        body = srv.client().get("/models").json()
        info = body["models"][0]
        assert (info["provider"], info["precision"], info["provider_fallback"]) == (
            "openvino",
            "fp32",
            False,
        )
        assert info["engine"]["layers_by_precision"] == {"f32": 21}
        assert body["cpu"]["int8_units"] == CPU.int8_units
        assert body["cpu"]["bf16"] is CPU.bf16
        data = jpeg(500, 375, seed=5)
        r = srv.client().post(
            "/predict?top_k=3", content=data, headers={"content-type": "image/jpeg"}
        )
        assert r.status_code == 200, r.text
        engine = open_engine(model_dir / "resnet18.onnx", EngineOptions("openvino", threads=2), CPU)
        logits = engine.run(0, preprocess(data, engine.meta.preprocessing)[np.newaxis])[0]
        expected = np.argsort(-logits, kind="stable")[:3].tolist()
        assert [p["index"] for p in r.json()["results"][0]["predictions"]] == expected
        labels = {"model": "resnet18", "provider": "openvino", "precision": "fp32"}
        assert metric(srv, "resnet_model_info", **labels) == 1.0
    finally:
        srv.stop()


def test_server_serves_a_named_bf16_variant_only_where_it_can_run(
    model_dir: Path, tmp_path: Path
) -> None:
    srv = start_server(
        model_dir,
        tmp_path,
        wait=CPU.bf16,
        models="resnet18-bf16",
        provider="openvino",
        warmup_batch_sizes="1",
    )
    if not CPU.bf16:  # named, so not best effort: the start fails with the reason
        assert srv.exit_status(120) == 1
        assert "model load failed: bf16 needs a CPU with bf16 units" in srv.log
        return
    try:
        info = srv.client().get("/models").json()["models"][0]
        assert (info["name"], info["ready"], info["precision"]) == ("resnet18-bf16", True, "bf16")
        assert info["engine"]["layers_by_precision"] == {"bf16": 21}
        r = srv.client().post(
            "/predict/resnet18-bf16?top_k=3",
            content=jpeg(500, 375, seed=5),
            headers={"content-type": "image/jpeg"},
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["results"][0]["predictions"]) == 3
        assert metric(srv, "resnet_inference_count_total", model="resnet18-bf16") == 1.0
    finally:
        srv.stop()
