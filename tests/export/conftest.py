"""Exports shared by the export tests: one per architecture, done once per session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from export.cli import ExportOptions, export_one
from export.verify import Report


def _export(out_dir: Path, architecture: str) -> tuple[Path, Report]:
    opts = ExportOptions("random", None, 0, out_dir, "fp32", 17, None)
    path = out_dir / f"{architecture}.onnx"
    with torch.no_grad():
        return path, export_one(architecture, path, opts)


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Report]]:
    out = tmp_path_factory.mktemp("models")
    return {a: _export(out, a) for a in ("resnet18", "resnet50")}


@pytest.fixture(scope="session")
def int8_resnet18(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``python -m export resnet18 --weights random --precision int8`` (provider auto);
    returns the file and the command's output."""
    out = tmp_path_factory.mktemp("int8")
    result = subprocess.run(
        [sys.executable, "-m", "export", "resnet18", "--weights", "random", "--precision",
         "int8", "--out-dir", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return out / "resnet18-int8.onnx", result.stdout
