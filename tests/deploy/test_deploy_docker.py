"""Dockerfile: hadolint-clean, the targets and runtime properties the deployment relies on.

Images are not built here (no Docker engine in CI); they are linted and inspected.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

from deploy_helpers import REPO, run, tool

DOCKERFILE = REPO / "Dockerfile"


def stages() -> dict[str, list[str]]:
    """``{stage name: [instruction lines]}`` with continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out: dict[str, list[str]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if m:
            current = (m.group(2) or m.group(1)).lower()
            out[current] = [line]
        elif current is not None:
            out[current].append(line)
    return out


def test_hadolint_clean() -> None:
    proc = run(tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE))
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_no_blanket_hadolint_ignores() -> None:
    text = DOCKERFILE.read_text()
    assert "global ignore" not in text
    for name in (".hadolint.yaml", ".hadolint.yml"):
        assert not (REPO / name).exists(), f"{name} would hide rules repo-wide"
    ignores = re.findall(r"#\s*hadolint ignore=(\S+)", text)
    # only the documented apt pin exception
    assert set(ignores) <= {"DL3008"}, ignores


def test_targets_and_default() -> None:
    s = stages()
    assert {"export", "cpu", "gpu"} <= s.keys()
    assert list(s)[-1] == "cpu", "the last stage is the default target: cpu"


def test_runtime_stages() -> None:
    s = stages()
    for name in ("cpu", "gpu"):
        body = "\n".join(s[name])
        assert re.search(r"^EXPOSE 8000$", body, re.MULTILINE), name
        assert re.search(r"^STOPSIGNAL SIGTERM$", body, re.MULTILINE), name
        user = re.findall(r"^USER (\S+)$", body, re.MULTILINE)
        assert user and not user[-1].startswith(("0", "root")), name
        assert re.fullmatch(r"\d+(:\d+)?", user[-1]), "numeric USER so runAsNonRoot can verify it"
        entry = re.findall(r"^ENTRYPOINT (.+)$", body, re.MULTILINE)
        assert entry, name
        argv = json.loads(entry[-1])  # exec form: python is PID 1 and gets SIGTERM
        assert argv[:3] == ["python", "-m", "server"], argv
        health = re.findall(r"^HEALTHCHECK .*CMD (\[.+\])$", body, re.MULTILINE)
        assert health, name
        assert "/healthz" in health[-1] and "urllib" in health[-1]
        assert "COPY --from=export" in body and "/models" in body
        # no torch, no compilers, no pip caches in the final stages
        assert "torch" not in body.lower()
        assert not re.search(r"\b(gcc|g\+\+|build-essential|python3-dev|python3-pip)\b", body)
        for line in s[name]:
            if "pip install" in line:
                raise AssertionError(f"pip install in final stage {name}: {line}")


def test_base_images_pinned() -> None:
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", text, re.MULTILINE))
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", args["PYTHON_IMAGE"]), args
    assert re.fullmatch(
        r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.\d\d", args["CUDA_IMAGE"]
    ), args
    for image in re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE):
        assert image.startswith("${") or ":" in image, f"unpinned base {image}"
        assert not image.endswith(":latest")


def test_onnxruntime_pins_match_cuda_base() -> None:
    text = DOCKERFILE.read_text()
    gpu = re.search(r"^ARG ORT_GPU_VERSION=(\d+)\.(\d+)\.(\d+)$", text, re.MULTILINE)
    assert gpu, "onnxruntime-gpu must be pinned"
    # onnxruntime-gpu >= 1.24 on PyPI is the CUDA 13 + cuDNN 9 build (see the Dockerfile header)
    assert (int(gpu.group(1)), int(gpu.group(2))) >= (1, 24)
    assert "nvidia/cuda:13." in text and "cudnn" in text
    assert re.search(r"^ARG TORCH_VERSION=2\.13\.0$", text, re.MULTILINE)
    assert "download.pytorch.org/whl/cpu" in text


def test_requirements_script_swaps_onnxruntime() -> None:
    proc = subprocess.run(
        [sys.executable, "docker/requirements.py", "--ort", "onnxruntime-gpu==1.31.1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    reqs = proc.stdout.split()
    assert "onnxruntime-gpu==1.31.1" in reqs
    assert not any(re.match(r"onnxruntime(?![-\w])", r) for r in reqs), reqs
    assert any(r.startswith("fastapi") for r in reqs)
    proc = subprocess.run(
        [
            sys.executable,
            "docker/requirements.py",
            "--ort",
            "onnxruntime==1.31.1",
            "--extra",
            "export",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "torch==2.13.0" in proc.stdout.split()


def test_dockerignore_is_an_allow_list() -> None:
    lines = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed <= {"pyproject.toml", "README.md", "server", "export", "docker"}, allowed
    # everything the Dockerfile COPYs from the context is allowed
    for src in re.findall(
        r"^COPY (?!--from)(?:--\S+ )*(\S+) ", DOCKERFILE.read_text(), re.MULTILINE
    ):
        assert src.split("/")[0].rstrip("/") in allowed, src
