"""INT8 export: calibration on real photos, agreement floors, metadata, failures."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from export import cli
from export.calibration import SKIMAGE_PHOTOS
from server.agreement import DEFAULT_FLOORS
from server.cpuinfo import read_cpuinfo
from server.engines import EngineOptions, open_engine
from server.photos import photo_batch, verification_photos


def test_int8_file_name_metadata_and_engine(int8_resnet18: tuple[Path, str]) -> None:
    path, output = int8_resnet18
    assert path.name == "resnet18-int8.onnx"
    assert f"verify {path}: OK" in output
    engine = open_engine(path, EngineOptions("openvino", threads=2), read_cpuinfo())
    assert (engine.report.precision, engine.report.layers) == ("int8", {"u8": 21})
    meta = engine.meta
    assert meta.precision == "int8"
    assert meta.calibration is not None
    c = meta.calibration
    assert (c.method, c.per_channel, c.activation_type, c.weight_type, c.reduce_range) == (
        "MinMax", True, "QUInt8", "QInt8", True,
    )  # fmt: skip
    assert (c.quant_format, c.photos, c.samples) == (
        "QDQ",
        len(SKIMAGE_PHOTOS),
        4 * len(SKIMAGE_PHOTOS),
    )
    assert c.source == "scikit-image 0.26.0 data photos"
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
    from server.agreement import compare

    # (the metadata holds the reference rounded to float32; verification used float64)
    again = compare(meta.reference.logits, logits).to_dict()
    assert again == pytest.approx(a.measurements[0].agreement.to_dict(), rel=1e-3)


def test_int8_below_a_floor_is_not_published(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        ["resnet18", "--weights", "random", "--precision", "int8", "--provider", "cpu",
         "--out-dir", str(tmp_path), "--floor", "max_rel_logit_error=0.001"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == cli.EXIT_VERIFY
    assert "BELOW FLOORS: max relative logit error" in out
    assert "is above the floor 0.001" in out
    assert not (tmp_path / "resnet18-int8.onnx").exists()
    assert (tmp_path / "resnet18-int8.onnx.unverified").is_file()


def _calibration_dir(tmp_path: Path) -> Path:
    import importlib.resources

    root = importlib.resources.files("skimage").joinpath("data")
    folder = tmp_path / "calib"
    folder.mkdir()
    for name in SKIMAGE_PHOTOS[:4]:
        (folder / name).write_bytes(root.joinpath(name).read_bytes())
    return folder


def test_corrupt_calibration_photo_names_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _calibration_dir(tmp_path)
    data = (folder / "brick.png").read_bytes()
    (folder / "brick.png").write_bytes(data[: len(data) // 2])
    code = cli.main(
        ["resnet18", "--weights", "random", "--precision", "int8", "--out-dir", str(tmp_path),
         "--calibration-dir", str(folder)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert err.strip() == (
        "error: calibration photo brick.png cannot be used: cannot decode image: truncated PNG "
        "data; remove or replace it"
    )


def test_verification_photos_are_never_calibration_photos(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _calibration_dir(tmp_path)
    shutil.copy(Path("server/data/photos/chelsea.png"), folder / "my_cat.png")
    code = cli.main(
        ["resnet18", "--weights", "random", "--precision", "int8", "--out-dir", str(tmp_path),
         "--calibration-dir", str(folder)]
    )  # fmt: skip
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
    from export.calibration import samples, skimage_photos
    from export.weights import imagenet_transform

    photos = skimage_photos().photos[:2]
    a, b = samples(photos, imagenet_transform()), samples(photos, imagenet_transform())
    assert a.shape == (8, 224, 224, 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[1], a[0][:, ::-1])  # the mirror image of the centre crop
