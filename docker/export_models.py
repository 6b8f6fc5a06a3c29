"""Build-time model export for the Dockerfile's ``export`` stage.

Reads ``WEIGHTS`` (``imagenet`` | ``random`` | a path to a state_dict file inside the build
context, e.g. ``docker/weights/resnet50.pth``), ``MODELS`` (space separated, default
``resnet18 resnet50``), ``QUANTIZE`` (space separated reduced precisions to export beside
each fp32 file, e.g. ``int8``; default none) and ``MODEL_DIR`` (default ``/models``) from the
environment, runs ``python -m export`` and turns its exit codes into a message a
``docker build`` user can act on. Exists so the Dockerfile needs no shell word-splitting of ``$MODELS``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXIT_VERIFY_FAILED = 1  # python -m export: a check (or an agreement floor) failed
EXIT_DOWNLOAD_FAILED = 3  # python -m export: imagenet weights could not be downloaded

RANDOM_BANNER = """
!!! WEIGHTS=random: exporting SEEDED RANDOM weights (seed 0) into this image.
!!! Its predictions are meaningless. The server says so again in GET /models
!!! ("random_weights": true), in resnet_model_info{random_weights="true"} and in its log.
"""


def main() -> int:
    weights = os.environ.get("WEIGHTS", "imagenet").strip() or "imagenet"
    models = os.environ.get("MODELS", "resnet18 resnet50").split()
    out_dir = os.environ.get("MODEL_DIR", "/models")
    if weights not in ("imagenet", "random"):
        path = Path(weights)
        if not path.is_file():
            print(
                f"WEIGHTS={weights!r} is neither 'imagenet', 'random' nor a file in the build "
                "context. Put the file under docker/weights/ and pass "
                "--build-arg WEIGHTS=docker/weights/<file>.",
                file=sys.stderr,
            )
            return 2
        if len(models) != 1:
            print(
                "a weights file holds one architecture: also pass --build-arg MODELS=<resnet18|resnet50>",
                file=sys.stderr,
            )
            return 2
    cmd = [sys.executable, "-m", "export", *models, "--weights", weights, "--out-dir", out_dir]
    if weights == "random":
        cmd += ["--seed", "0"]
        print(RANDOM_BANNER, flush=True)
    rc = _run(cmd)
    for precision in os.environ.get("QUANTIZE", "").split():
        if rc == 0:
            rc = _run([*cmd, "--precision", precision])
    if rc == EXIT_VERIFY_FAILED:
        print(
            "a model failed its verification (for a reduced precision: its agreement floors; "
            "random weights' ResNet50 INT8 does). Build without QUANTIZE, or with real weights.",
            file=sys.stderr,
        )
    if rc == EXIT_DOWNLOAD_FAILED:
        print(
            "downloading the ImageNet weights failed (no network in the build?). Rebuild with "
            "--build-arg WEIGHTS=random for a smoke-test image, or pass a local file.",
            file=sys.stderr,
        )
    return rc


def _run(cmd: list[str]) -> int:
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    raise SystemExit(main())
