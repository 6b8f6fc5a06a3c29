"""python -m export.evaluate on a small labelled folder built here."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from contract.cpuinfo import read_cpuinfo
from contract.photos import photo_batch, verification_photos
from export import evaluate
from export.labels import imagenet_synsets
from server.models.engines import EngineOptions, open_engine
from tests.export.helpers import CliExport


def _ranked(path: Path, provider: str) -> np.ndarray:
    engine = open_engine(path, EngineOptions(provider, threads=2), read_cpuinfo())
    logits = engine.run(0, photo_batch(verification_photos(), engine.meta.preprocessing))
    return np.argsort(-logits, axis=1)


@pytest.fixture
def labelled(fp32_resnet18: CliExport, tmp_path: Path) -> tuple[Path, np.ndarray]:
    """The 7 verification photos filed under the WordNet id of the fp32 model's own top-1,
    except photo 0, filed under its third-ranked class (a top-1 miss, a top-5 hit)."""
    ranked = _ranked(fp32_resnet18.path, "openvino")
    labels = ranked[:, 0].copy()
    labels[0] = ranked[0, 2]
    wnids = imagenet_synsets()
    for photo, label in zip(verification_photos(), labels, strict=True):
        folder = tmp_path / "val" / wnids[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / photo.name).write_bytes(photo.data)
    return tmp_path / "val", labels


def test_evaluate_folder_fp32_and_int8(
    fp32_resnet18: CliExport,
    int8_resnet18: CliExport,
    labelled: tuple[Path, np.ndarray],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, labels = labelled
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(fp32_resnet18.path, models / "resnet18.onnx")
    shutil.copy(int8_resnet18.path, models / "resnet18-int8.onnx")
    code = evaluate.main(
        ["--data", str(data), "--model-dir", str(models), "--provider", "openvino"]
    )
    out = capsys.readouterr().out
    assert code == 0
    rows = {line.split()[0] + " " + line.split()[1]: line.split() for line in out.splitlines()[1:3]}
    assert rows["resnet18 fp32"][2:7] == ["openvino", "7", "85.714", "100.000", "+0.000"]
    int8 = _ranked(int8_resnet18.path, "openvino")
    top1 = 100 * float((int8[:, 0] == labels).mean())
    top5 = 100 * float((int8[:, :5] == labels[:, None]).any(axis=1).mean())
    assert rows["resnet18-int8 int8"][4:8] == [
        f"{top1:.3f}",
        f"{top5:.3f}",
        f"{85.714 - top1:+.3f}".replace("-0.000", "+0.000"),
        f"{100 - top5:+.3f}",
    ]
    # bf16 of the fp32 file: evaluated where the CPU has the units, named where it has not
    bf16_rows = [row for row in map(str.split, out.splitlines()) if row[:2] == ["resnet18", "bf16"]]
    if read_cpuinfo().bf16:
        assert len(bf16_rows) == 1 and bf16_rows[0][2:4] == ["openvino", "7"], out
    else:
        assert bf16_rows == []
        assert "note: resnet18 bf16: not evaluated: bf16 needs a CPU with bf16 units" in out


def test_labels_file_and_bad_input(
    labelled: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, labels = labelled
    samples = evaluate.folder_samples(data)
    lines = [f"{s.path.relative_to(data)} {s.label}" for s in samples]
    (tmp_path / "labels.txt").write_text("# path label\n" + "\n".join(lines) + "\n")
    from_file = evaluate.labels_file_samples(data, tmp_path / "labels.txt")
    assert from_file == samples
    assert sorted(s.label for s in samples) == sorted(int(x) for x in labels)
    (tmp_path / "bad" / "n99999999").mkdir(parents=True)
    code = evaluate.main(["--data", str(tmp_path / "bad"), "--model-dir", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: class folder {tmp_path / 'bad' / 'n99999999'}: 'n99999999' is neither an "
        "ImageNet WordNet id nor a class index"
    )
