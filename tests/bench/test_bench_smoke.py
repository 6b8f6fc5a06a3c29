"""The benchmark's self-check: run it end to end at tiny sizes (``--smoke``: resnet18, fp32 on
ONNX Runtime's CPU provider and a fast variant where this machine has one, sub-second phases,
the naive peer only) and check the reports and plots are produced.

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
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--out",
            str(out),
            "--model-dir",
            str(models),
            "--json",
            str(tmp_path / "results.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    md = (out / "BENCHMARKS.md").read_text()
    for header in (
        "## Headline",
        "## Method: what runs during a phase, the ceiling, marked phases",
        "| variant | server peak req/s | server / ceiling: decode + engine alone on all cores, "
        "img/s (goal >= 0.85) | server / in-process pipeline img/s (goal >= 0.9) |",
        "### Ceiling: decode + engine alone on all cores",
        "| variant | decode core-ms / image | engine images/s at its best batch |",
        "## Phase isolation",
        "| resnet18 fp32@cpu |",
        "Overload (3x the peak, open loop; section 5):",
        "bf16 units: **",
        "### Raw engine",
        "| variant | executes | batch | ms / batch (p50) |",
        "### Preprocessing alone",
        "### In-process pipeline",
        "## 2. Speed beside agreement",
        "### resnet18 fp32@cpu: closed loop",
        "| concurrency | req/s | per round | p50 ms | p90 ms | p99 ms | max ms | errors | 503 |",
        "| variant | executes | server peak req/s | speed-up vs fp32 same provider |",
        ": open loop",
        "## 4. Peers on the fast variant",
        "server / naive",
        "## 5. Overload",
        "| variant | queue timeout s | offered req/s (x peak) |",
        "## 6. Does the event loop or the GIL cap throughput",
        "| variant | server | concurrency | req/s | event loop (cores) |",
        "## 7. Thread split",
        "intra 1 / pre 1",
        "## 8. Where a request's time goes",
        "## 9. Where the server falls short, and why",
        "python -m bench --smoke",
    ):
        # A missing section is most often a server that did not start: show why.
        assert header in md, (header, [ln for ln in md.splitlines() if "failed" in ln])
    batching = (out / "BATCHING.md").read_text()
    assert "| variant | concurrency | policy | req/s |" in batching
    assert "## Conclusion" in batching
    for name in ("throughput_vs_concurrency", "latency_vs_load", "time_breakdown", "batch_cost"):
        png = out / "bench" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC, name

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["cfg"]["mode"] == "smoke"
    served = [v["model"] + "@" + v["provider"] for v in results["plan"]["served"]]
    assert served[0] == "resnet18@cpu"
    assert {p["target"] for p in results["closed"]} == {"server", "naive"}
    assert {p["variant"] for p in results["closed"]} == set(served)
    assert all(p["errors"] == 0 for p in results["closed"])
    # Thread accounting found the event loop and the engine's threads in every server phase.
    ours = [p for p in results["closed"] if p["target"] == "server"]
    for p in ours:
        engine = p["extra"].get("cpu:runner", 0) + p["extra"].get("cpu:engine runtime", 0)
        assert p["extra"]["cpu:event loop"] > 0 and engine > 0, p["extra"]
    # Phase isolation: the other server paused in every phase, the machine's CPU recorded.
    assert all(p["paused"] >= 1 for p in results["closed"]), [
        p["paused"] for p in results["closed"]
    ]
    assert all(p["others_cores"] >= 0 and isinstance(p["marked"], bool) for p in results["closed"])
    assert all(p["marked"] == (p["others_cores"] > 0.05) for p in results["closed"])
    assert "resnet18@cpu" in results["ceiling"]
    for ceiling in results["ceiling"].values():  # every variant of the limits step
        assert ceiling["cores"] >= 1 and 0 < ceiling["decode_s"] < 1
        assert ceiling["engine_images_per_s"] > 0 and ceiling["engine_batch"] >= 1
    # The overload phase: every refusal a 503 with a code, counted on both sides.
    (over,) = results["overload"]
    assert over["phase"]["errors"] == 0
    assert sum(over["phase"]["refusal_codes"].values()) == over["phase"]["rejected"]
    assert over["rss_peak"] >= over["rss_before"] > 0
