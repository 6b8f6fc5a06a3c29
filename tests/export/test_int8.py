"""INT8 export: calibration on real photos, agreement floors, metadata, failures."""

from __future__ import annotations

import importlib.resources
import shutil
import socket
from pathlib import Path

import numpy as np
import onnx
import pytest

from contract.agreement import DEFAULT_FLOORS, compare
from contract.cpuinfo import read_cpuinfo
from contract.modelmeta import parse_metadata
from contract.photos import photo_batch, verification_photos
from export import cli
from export.calibration import SKIMAGE_PHOTOS, samples, skimage_photos
from export.weights import BASE_URL_ENV, imagenet_transform
from server.models.engines import EngineOptions, open_engine
from tests.export.helpers import CliExport


def test_int8_file_name_metadata_and_engine(int8_resnet18: CliExport) -> None:
    path, output = int8_resnet18.path, int8_resnet18.stdout
    assert path.name == "resnet18-int8.onnx"
    assert f"verify {path}: OK" in output
    engine = open_engine(path, EngineOptions("openvino", threads=2), read_cpuinfo())
    assert (engine.report.precision, engine.report.layers) == ("int8", {"u8": 21})
    meta = engine.meta
    assert meta.precision == "int8"
    assert meta.calibration is not None
    c = meta.calibration
    assert (c.method, c.per_channel, c.activation_type, c.weight_type, c.reduce_range) == (
        "MinMax",
        True,
        "QUInt8",
        "QInt8",
        True,
    )
    assert (c.quant_format, c.photos, c.samples) == (
        "QDQ",
        len(SKIMAGE_PHOTOS),
        4 * len(SKIMAGE_PHOTOS),
    )
    assert c.source == "scikit-image 0.26.0 data photos"
    assert c.options == {
        "op_types": "default",
        "OpTypesToExcludeOutputQuantization": ["Gemm"],
        "samples_per_photo": 4,
    }
    # float logits: the last Gemm's output goes straight to the output cast, unquantised
    graph = onnx.load(str(path)).graph
    (gemm,) = [n for n in graph.node if n.op_type == "Gemm"]
    assert [n.op_type for n in graph.node if gemm.output[0] in n.input] == ["Cast"]
    assert meta.agreement is not None
    a = meta.agreement
    assert (a.precision, a.serving_provider, a.floors) == (
        "int8",
        "openvino",
        DEFAULT_FLOORS["int8"],
    )
    assert [m.provider for m in a.measurements] == ["openvino", "cpu"]
    assert [m.executed_precision for m in a.measurements] == ["int8", "int8"]
    assert a.measurements[0].cpu == read_cpuinfo().describe()
    # What the file says it measured is what the engine gives on the reference photos.
    assert meta.reference is not None
    logits = engine.run(0, photo_batch(verification_photos(), meta.preprocessing))
    # The metadata holds the reference rounded to float32 (verification used float64): that
    # rounding moved the measures by at most 1.3e-6 relative here (max |prob diff|; the
    # others < 1e-7), so 1e-4 leaves room and still catches any other difference.
    again = compare(meta.reference.logits, logits).to_dict()
    assert again == pytest.approx(a.measurements[0].agreement.to_dict(), rel=1e-4)


def _calibration_dir(tmp_path: Path) -> Path:
    """4 of the default calibration photos (the fewest a folder may hold) in a folder."""
    root = importlib.resources.files("skimage").joinpath("data")
    folder = tmp_path / "calib"
    folder.mkdir()
    for name in SKIMAGE_PHOTOS[:4]:
        (folder / name).write_bytes(root.joinpath(name).read_bytes())
    return folder


def test_int8_below_a_floor_is_not_published(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Calibrated on a folder of 4 photos: 16 samples, quicker than the default 40, and the
    # --calibration-dir path end to end. The rejected file is kept with what was measured.
    code = cli.main(
        [
            "resnet18",
            "--weights",
            "random",
            "--precision",
            "int8",
            "--provider",
            "cpu",
            "--out-dir",
            str(tmp_path),
            "--calibration-dir",
            str(_calibration_dir(tmp_path)),
            "--floor",
            "max_rel_logit_error=0.001",
        ]
    )
    out = capsys.readouterr().out
    assert code == cli.EXIT_VERIFY
    assert "BELOW FLOORS: max relative logit error" in out
    assert "is above the floor 0.001" in out
    assert not (tmp_path / "resnet18-int8.onnx").exists()
    rejected = tmp_path / "resnet18-int8.onnx.unverified"
    assert f"verification failed: {tmp_path / 'resnet18-int8.onnx'} left unchanged" in out
    meta = parse_metadata({p.key: p.value for p in onnx.load(str(rejected)).metadata_props})
    assert meta.calibration is not None and meta.agreement is not None
    assert (meta.calibration.source, meta.calibration.photos, meta.calibration.samples) == (
        "folder calib",
        4,
        16,
    )
    assert meta.agreement.floors.max_rel_logit_error == 0.001
    (measured,) = meta.agreement.measurements
    assert measured.provider == "cpu"
    assert measured.agreement.max_rel_logit_error > 0.001


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_corrupt_calibration_photo_names_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _calibration_dir(tmp_path)
    data = (folder / "brick.png").read_bytes()
    (folder / "brick.png").write_bytes(data[: len(data) // 2])
    # Published weights that cannot be downloaded: the photos are checked first, so the
    # answer is the photo's exit code 2, not the download's 3, and nothing is fetched.
    monkeypatch.setenv(BASE_URL_ENV, f"http://127.0.0.1:{_closed_port()}/")
    code = cli.main(
        [
            "resnet18",
            "--weights",
            "imagenet",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--precision",
            "int8",
            "--out-dir",
            str(tmp_path),
            "--calibration-dir",
            str(folder),
        ]
    )
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert err.strip() == (
        "error: calibration photo brick.png cannot be used: cannot decode image: truncated PNG "
        "data; remove or replace it"
    )
    assert not (tmp_path / "cache").exists()


def test_verification_photos_are_never_calibration_photos(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _calibration_dir(tmp_path)
    shutil.copy(Path("contract/data/photos/chelsea.png"), folder / "my_cat.png")
    code = cli.main(
        [
            "resnet18",
            "--weights",
            "random",
            "--precision",
            "int8",
            "--out-dir",
            str(tmp_path),
            "--calibration-dir",
            str(folder),
        ]
    )
    assert code == cli.EXIT_USAGE
    assert capsys.readouterr().err.strip() == (
        "error: calibration photo my_cat.png is the verification photo chelsea.png: "
        "verification photos must never be used for calibration; remove it"
    )


def test_bad_floor_argument_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["resnet18", "--precision", "int8", "--floor", "top1=0.9"])
    assert exit_info.value.code == 2
    assert "unknown floor 'top1'" in capsys.readouterr().err


def test_calibration_samples_are_deterministic() -> None:
    photos = skimage_photos().photos[:2]
    a, b = samples(photos, imagenet_transform()), samples(photos, imagenet_transform())
    assert a.shape == (8, 224, 224, 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[1], a[0][:, ::-1])  # the mirror image of the centre crop
