"""The benchmark's self-check: run it end to end at tiny sizes (``--smoke``: resnet18 only,
sub-second phases, the naive peer only) and check the reports and plots are produced.

Never asserts on timings: this machine's speed is not under test, the benchmark code is.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

# The benchmark's own dependencies (the `bench` extra); skip cleanly where they are missing.
pytest.importorskip("matplotlib")
pytest.importorskip("skimage")
pytest.importorskip("tqdm")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_smoke_run_writes_reports_and_plots(model_dir: Path, tmp_path: Path) -> None:
    # The session's ResNet18, not an export of its own: an export (float64 reference
    # included) costs as much as the whole smoke run.
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(model_dir / "resnet18.onnx", models / "resnet18.onnx")
    out = tmp_path / "docs"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out),
         "--model-dir", str(models), "--json", str(tmp_path / "results.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    md = (out / "BENCHMARKS.md").read_text()
    for header in (
        "## Headline",
        "| ratio | measured | goal | met |",
        "### Raw ONNX Runtime",
        "| model | batch | ms / batch (p50) |",
        "### Preprocessing alone",
        "### In-process pipeline",
        "### resnet18: closed loop",
        "| concurrency | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | 503 | mean batch |",
        "### resnet18: open loop",
        "## 3. Peers",
        "server / naive",
        "## 4. Where a request's time goes",
        "## 5. Where the server falls short, and why",
        "python -m bench --smoke",
    ):
        assert header in md, header
    batching = (out / "BATCHING.md").read_text()
    assert "| model | concurrency | policy | req/s |" in batching
    assert "## Conclusion" in batching
    for name in ("throughput_vs_concurrency", "latency_vs_load", "time_breakdown", "batch_cost"):
        png = out / "bench" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC, name

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["cfg"]["mode"] == "smoke"
    assert {p["target"] for p in results["closed"]} == {"server", "naive"}
    assert all(p["errors"] == 0 for p in results["closed"])
