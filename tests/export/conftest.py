"""Exports shared by the export tests, each made once per session and only when a test asks.

An export costs a float64 reference run plus an export and checks on each engine (seconds for
ResNet18, several times that for ResNet50 on 2 cores), so the tests share a handful of them:
random-weight ResNet18 through the CLI in fp32 and INT8, and the realistic-statistics models
of both architectures (``export_one`` in-process). ResNet50 is exported only for the tests
about ResNet50.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from contract.modelmeta import Preprocessing
from export import cli
from export.verify import VerificationData
from tests.export.helpers import CliExport, RealisticExport, run_cli
from tests.export.realistic import realistic_state_dict


@pytest.fixture(scope="session")
def fp32_resnet18(tmp_path_factory: pytest.TempPathFactory) -> CliExport:
    """``python -m export resnet18 --weights random`` (seed 0, provider auto: verified on
    the serving engine and on ONNX Runtime CPU)."""
    out = tmp_path_factory.mktemp("fp32")
    result = run_cli("resnet18", "--weights", "random", "--out-dir", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    return CliExport(out / "resnet18.onnx", result.stdout)


@pytest.fixture(scope="session")
def int8_resnet18(int8_export: tuple[Path, str]) -> CliExport:
    """``python -m export resnet18 --weights random --precision int8`` (provider auto,
    the default calibration photos): the session's export, shared with the server tests."""
    return CliExport(*int8_export)


@pytest.fixture(scope="session")
def realistic(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], RealisticExport]:
    """``realistic(arch)``: that architecture's realistic export, made on first use."""
    out = tmp_path_factory.mktemp("realistic")
    made: dict[str, RealisticExport] = {}

    def get(arch: str) -> RealisticExport:
        if arch not in made:
            weights, path = out / f"{arch}.pth", out / f"{arch}.onnx"
            torch.save(realistic_state_dict(arch), weights)
            seen: list[VerificationData] = []

            def keep(model: nn.Module, spec: Preprocessing, seed: int = 0) -> VerificationData:
                seen.append(real(model, spec, seed))
                return seen[-1]

            # The data export_one verifies with is kept, so that the deliberately broken
            # exports of test_verify.py are judged against the very reference this file passed.
            real = cli.verification_data
            opts = cli.ExportOptions(str(weights), None, 0, out, "fp32", 17, None, "cpu")
            with pytest.MonkeyPatch.context() as mp, torch.no_grad():
                mp.setattr(cli, "verification_data", keep)
                report = cli.export_one(arch, path, opts)
            made[arch] = RealisticExport(weights, path, report, seen[0])
        return made[arch]

    return get
