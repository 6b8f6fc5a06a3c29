"""Exports shared by the export tests: one per architecture, done once per session."""

from __future__ import annotations

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
