"""Export tests: networks, folding, ONNX graph, equivalence, metadata, download, CLI."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import openvino
import pytest
import torch

import export.cli
from contract.agreement import DEFAULT_FLOORS, compare
from contract.cpuinfo import read_cpuinfo
from contract.modelmeta import parse_metadata
from contract.photos import photo_batch, verification_photos
from export.fold import fuse_conv_bn
from export.onnx_export import count_ops
from export.resnet import build
from export.verify import Report, random_images
from export.weights import (
    BASE_URL_ENV,
    WeightsDownloadError,
    WeightsError,
    imagenet_weights,
    load_into,
    lookup,
    random_weights,
    sha256_file,
)
from tests.export.helpers import CliExport, RealisticExport, report_lines, run_cli

ORT = f"onnxruntime {ort.__version__}"
OPENVINO = f"openvino {openvino.get_version().split('-')[0]}"


@pytest.mark.parametrize(("arch", "count"), [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_parameter_count(arch: str, count: int) -> None:
    assert sum(p.numel() for p in build(arch).parameters()) == count


def test_torchvision_key_names_load_strict(tmp_path: Path) -> None:
    sd = build("resnet50").state_dict()
    assert "layer1.0.downsample.0.weight" in sd
    assert "layer4.2.bn3.running_var" in sd
    assert "fc.bias" in sd
    torch.save(sd, tmp_path / "w.pth")
    load_into(build("resnet50"), torch.load(tmp_path / "w.pth", weights_only=True))


def test_wrong_keys_fail_clearly() -> None:
    sd = build("resnet18").state_dict()
    sd["head.weight"] = sd.pop("fc.weight")
    with pytest.raises(
        WeightsError, match=r"1 missing keys \['fc.weight'\].*1 unexpected keys \['head.weight'\]"
    ):
        load_into(build("resnet18"), sd)


def test_resnet50_state_dict_does_not_fit_resnet18() -> None:
    with pytest.raises(WeightsError, match="missing keys"):
        load_into(build("resnet18"), build("resnet50").state_dict())


def _random_model(arch: str) -> torch.nn.Module:
    model = build(arch)
    model.load_state_dict(random_weights(arch, seed=1).state_dict)
    return model.eval()


def test_fusion_preserves_logits_resnet18() -> None:
    model = _random_model("resnet18")
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (model(x) - fuse_conv_bn(model)(x)).abs().max().item()
    assert diff <= 1e-5
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fuse_conv_bn(model).modules())


def test_fusion_is_exact_resnet50_float64() -> None:
    # In float32, ResNet50's own rounding noise (unfused f32 vs f64) is ~4e-5, above 1e-5;
    # folding itself is checked in float64, where any formula error would show.
    model = _random_model("resnet50").double()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        diff = (model(x) - fuse_conv_bn(model)(x)).abs().max().item()
    assert diff <= 1e-10


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_graph_has_no_batchnorm_and_declared_io(
    fp32_resnet18: CliExport, realistic: Callable[[str], RealisticExport], arch: str
) -> None:
    # ResNet50's file is the realistic-statistics export (test_verify.py), made anyway.
    path = fp32_resnet18.path if arch == "resnet18" else realistic(arch).path
    model = onnx.load(str(path))
    assert count_ops(model, "BatchNormalization") == 0
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "images"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim] == [
        "N",
        224,
        224,
        3,
    ]
    assert out.name == "logits"
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    meta = parse_metadata({p.key: p.value for p in model.metadata_props})
    assert meta.architecture == arch
    if arch == "resnet50":
        assert meta.weights_sha256 == sha256_file(realistic(arch).weights)


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_dynamic_batch(fp32_resnet18: CliExport, batch: int) -> None:
    session = _session(fp32_resnet18.path)
    (logits,) = session.run(None, {"images": random_images(batch, 224, seed=batch)})
    assert logits.shape == (batch, 1000)
    assert logits.dtype == np.float32


def test_cli_verifies_on_the_serving_engine_and_ort_cpu(fp32_resnet18: CliExport) -> None:
    out = fp32_resnet18.stdout
    assert f"verify {fp32_resnet18.path}: OK" in out
    assert "[ok] onnx.checker: passed" in out
    assert "[ok] BatchNormalization nodes: 0" in out
    # provider auto is OpenVINO here (no CUDA); ONNX Runtime CPU is checked as well
    for label in (f"openvino ({OPENVINO}, fp32)", f"cpu ({ORT}, fp32)"):
        lines = report_lines(out, label)
        assert [line.split(": ")[1] for line in lines] == [
            "batch 1 = row of batch 7",
            "max |file - float64 torch|",
            "top-1 identical",
            "photos",
        ]
        assert [line.split("]")[0] for line in lines] == ["[ok", "[ok", "[ok", "[info"]
        assert "x PyTorch float32's own error" in lines[1]
        assert ": 9/9 rows" in lines[2]
        assert ": photos: top-1 7/7, top-5 overlap 1.000," in lines[3]


def test_metadata_round_trip(fp32_resnet18: CliExport) -> None:
    session = _session(fp32_resnet18.path)
    meta = parse_metadata(session.get_modelmeta().custom_metadata_map)
    assert meta.architecture == "resnet18"
    assert meta.num_classes == 1000
    assert meta.labels[0] == "tench"
    assert meta.labels[207] == "golden retriever"
    assert (meta.preprocessing.resize_size, meta.preprocessing.crop_size) == (256, 224)
    assert meta.preprocessing.mean == (0.485, 0.456, 0.406)
    assert meta.preprocessing.interpolation == "bilinear"
    assert (meta.weights, meta.weights_source, meta.weights_detail) == (
        "random",
        "random",
        "seed=0",
    )
    assert meta.random_weights is True
    assert meta.weights_sha256 == random_weights("resnet18", 0).sha256
    assert (meta.input_name, meta.input_layout, meta.input_dtype) == ("images", "NHWC", "uint8")
    assert (meta.output_name, meta.precision, meta.opset) == ("logits", "fp32", "17")
    assert meta.accuracy == {}
    assert meta.reference is not None
    assert meta.reference.photos == tuple((p.name, p.sha256) for p in verification_photos())
    assert meta.reference.logits.shape == (7, 1000)
    assert meta.reference.computed_with.startswith("torch 2.13.0")
    assert (meta.agreement, meta.calibration) == (None, None)
    # the server's own engine on the server's own preprocessing reproduces the reference
    photos = photo_batch(verification_photos(), meta.preprocessing)
    logits = session.run(None, {"images": photos})[0]
    assert compare(meta.reference.logits, logits).max_rel_logit_error < 1e-5


def test_published_weights_carry_their_preprocessing() -> None:
    v2 = lookup("resnet50", "IMAGENET1K_V2")
    assert (v2.preprocessing.resize_size, v2.hash_prefix) == (232, "11ad3fa6")
    assert v2.accuracy == {"acc@1": 80.858, "acc@5": 95.434}
    assert lookup("resnet18").accuracy == {"acc@1": 69.758, "acc@5": 89.078}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def weights_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_address[1]}/", root
        server.shutdown()
        thread.join()


def _real_file_name_prefix(tmp: Path, arch: str) -> tuple[Path, str]:
    sd = random_weights(arch, 3).state_dict
    path = tmp / "w.pth"
    torch.save(sd, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_imagenet_download_over_http(
    weights_server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, root = weights_server
    path, digest = _real_file_name_prefix(tmp_path, "resnet18")
    entry = lookup("resnet18")
    monkeypatch.setattr(type(entry), "hash_prefix", property(lambda self: digest[:8]))
    (root / entry.file_name).write_bytes(path.read_bytes())
    monkeypatch.setenv(BASE_URL_ENV, base_url)
    cache = tmp_path / "cache"
    w = imagenet_weights("resnet18", cache_dir=cache, progress=False)
    assert (w.source, w.name, w.sha256) == ("imagenet", "IMAGENET1K_V1", digest)
    assert w.detail == base_url + entry.file_name
    assert w.accuracy == {"acc@1": 69.758, "acc@5": 89.078}
    assert [p.name for p in cache.iterdir()] == [entry.file_name]
    load_into(build("resnet18"), w.state_dict)


def test_corrupted_download_is_rejected(weights_server: tuple[str, Path], tmp_path: Path) -> None:
    base_url, root = weights_server
    entry = lookup("resnet18")
    (root / entry.file_name).write_bytes(b"not the weights")
    cache = tmp_path / "cache"
    with pytest.raises(WeightsDownloadError, match="hash mismatch"):
        imagenet_weights("resnet18", cache_dir=cache, base_url=base_url, progress=False)
    assert list(cache.iterdir()) == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_network_names_the_alternatives(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/"
    with pytest.raises(WeightsDownloadError, match=r"--weights random.*--weights PATH"):
        imagenet_weights("resnet18", cache_dir=tmp_path, base_url=url, progress=False)


def test_default_file_names() -> None:
    assert export.cli.default_file_name("resnet50", "fp32") == "resnet50.onnx"
    assert export.cli.default_file_name("resnet50", "fp16") == "resnet50-fp16.onnx"
    assert export.cli.default_file_name("resnet18", "int8") == "resnet18-int8.onnx"


def test_cli_no_network_exit_code_3(tmp_path: Path) -> None:
    env = {**os.environ, BASE_URL_ENV: f"http://127.0.0.1:{_closed_port()}/"}
    result = run_cli("resnet18", "--cache-dir", str(tmp_path), "--out-dir", str(tmp_path), env=env)
    assert result.returncode == 3
    assert "--weights random" in result.stderr
    assert "--weights PATH" in result.stderr
    assert not (tmp_path / "resnet18.onnx").exists()


def test_cli_fp16_judged_on_photos(tmp_path: Path) -> None:
    result = run_cli(
        "resnet18",
        "--weights",
        "random",
        "--precision",
        "fp16",
        "--out-dir",
        str(tmp_path),
        "--provider",
        "cpu",
        "--name",
        "r18-half",
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert f"verify {tmp_path / 'r18-half.onnx'}: OK" in result.stdout
    assert f"[ok] cpu ({ORT}, fp16): agreement on 7 photos: top-1 7/7" in result.stdout
    assert "openvino" not in result.stdout  # --provider cpu: checked on ONNX Runtime CPU only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r18-half.onnx"]
    session = _session(tmp_path / "r18-half.onnx")
    meta = parse_metadata(session.get_modelmeta().custom_metadata_map)
    assert meta.precision == "fp16"
    assert meta.agreement is not None
    assert (meta.agreement.precision, meta.agreement.serving_provider) == ("fp16", "cpu")
    assert meta.agreement.floors == DEFAULT_FLOORS["fp16"]
    (measured,) = meta.agreement.measurements
    assert (measured.provider, measured.executed_precision) == ("cpu", "fp16")
    assert measured.agreement.top1 == 1.0
    assert measured.cpu == read_cpuinfo().describe()
    (logits,) = session.run(None, {"images": random_images(2, 224, seed=0)})
    assert logits.dtype == np.float32


def test_a_model_that_fails_verification_never_replaces_the_served_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served = tmp_path / "resnet18.onnx"
    served.write_bytes(b"the good model already being served")

    def failing_export(architecture: str, path: Path, opts: export.cli.ExportOptions) -> Report:
        path.write_bytes(b"a model that failed verification")
        report = Report(path)
        report.add("cpu: max |file - float64 torch|", False, "1.0e+00 (bound 1e-04)")
        return report

    monkeypatch.setattr(export.cli, "export_one", failing_export)
    code = export.cli.main(["resnet18", "--weights", "random", "--out-dir", str(tmp_path)])
    assert code == export.cli.EXIT_VERIFY
    assert served.read_bytes() == b"the good model already being served"
    rejected = tmp_path / "resnet18.onnx.unverified"
    assert rejected.read_bytes() == b"a model that failed verification"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet18.onnx", rejected.name]
    out = capsys.readouterr().out
    assert f"verify {served}: FAILED" in out
    assert out.endswith(
        f"verification failed: {served} left unchanged; the rejected model is {rejected}\n"
    )


def test_a_failure_that_writes_no_file_is_reported_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An INT8 export whose fp32 base fails verification writes no file: the report says
    which check failed (no traceback), and a stale rejected file of an earlier run is not
    passed off as this run's."""
    from export import cli
    from export.verify import Report

    def failing(architecture: str, path: Path, opts: cli.ExportOptions) -> Report:
        report = Report(path)
        report.add("cpu (fp32 base): max |file - float64 torch|", False, "9.9e-01 (bound 1e-04)")
        return report

    monkeypatch.setattr(cli, "export_one", failing)
    target = tmp_path / "resnet18-int8.onnx"
    stale = tmp_path / "resnet18-int8.onnx.unverified"
    stale.write_bytes(b"an earlier run's rejected file")
    opts = cli.ExportOptions("random", None, 0, tmp_path, "int8", 17, None)
    assert cli._run("resnet18", target, opts) == cli.EXIT_VERIFY
    out = capsys.readouterr().out
    assert "[FAIL] cpu (fp32 base): max |file - float64 torch|: 9.9e-01 (bound 1e-04)" in out
    assert "file: not written, export+verify" in out
    assert f"verification failed: {target} left unchanged\n" in out
    assert "rejected model" not in out
    assert not stale.exists() and not target.exists()
