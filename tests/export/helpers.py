"""Helpers of the export tests: the CLI in a subprocess, its printed report, shared exports."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from export.verify import Report, VerificationData

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class CliExport:
    """A file published by ``python -m export`` and what the command printed."""

    path: Path
    stdout: str


@dataclass(frozen=True)
class RealisticExport:
    """A model with realistic BatchNorm statistics (``tests/export/realistic.py``), exported
    by ``export_one`` with ``--provider cpu``: its state_dict file, the exported file, the
    verification report and the data (inputs, float64 reference) it was verified against."""

    weights: Path
    path: Path
    report: Report
    data: VerificationData


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m export ARGS`` from the repository root; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "export", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )


def report_lines(stdout: str, label: str) -> list[str]:
    """The report's check lines for one engine, e.g. ``label`` ``"cpu (onnxruntime 1.32.0,
    fp32)"``, stripped: ``"[ok] <label>: <check>: <detail>"`` (or ``[FAIL]``/``[info]``)."""
    lines = [line.strip() for line in stdout.splitlines()]
    return [
        line for line in lines if line.startswith("[") and line.split("] ", 1)[1].startswith(label)
    ]
