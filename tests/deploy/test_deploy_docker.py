"""Dockerfile: hadolint-clean, the targets and runtime properties the deployment relies on.

Static checks, fast enough for every `make test`. The images are built and run for real by
tests/docker/ (`make docker-test`, minutes).
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


def resolved(s: dict[str, list[str]], name: str) -> list[str]:
    """The instructions of stage ``name`` and of the stages it is built FROM, oldest first."""
    base = re.match(r"FROM\s+(\S+)", s[name][0], re.IGNORECASE)
    assert base
    parent = base.group(1).lower()
    return (resolved(s, parent) if parent in s else []) + s[name]


def test_targets_and_default() -> None:
    s = stages()
    assert {"export", "cpu", "gpu"} <= s.keys()
    assert list(s)[-1] == "cpu", "the last stage is the default target: cpu"


def test_runtime_stages() -> None:
    s = stages()
    for name in ("cpu", "gpu"):
        own = "\n".join(s[name])
        body = "\n".join(resolved(s, name))  # with what it inherits (the runtime stage)
        assert re.search(r"^EXPOSE 8000$", body, re.MULTILINE), name
        assert re.search(r"^STOPSIGNAL SIGTERM$", body, re.MULTILINE), name
        # USER in the final stage itself: the last word on who runs the server.
        user = re.findall(r"^USER (\S+)$", own, re.MULTILINE)
        assert user and not user[-1].startswith(("0", "root")), name
        assert re.fullmatch(r"\d+(:\d+)?", user[-1]), "numeric USER so runAsNonRoot can verify it"
        assert s[name][-1].startswith("USER "), f"{name}: nothing may run as root after USER"
        entry = re.findall(r"^ENTRYPOINT (.+)$", body, re.MULTILINE)
        assert entry, name
        argv = json.loads(entry[-1])  # exec form: python is PID 1 and gets SIGTERM
        assert argv[:3] == ["python", "-m", "server"], argv
        health = re.findall(r"^HEALTHCHECK .*CMD (\[.+\])$", body, re.MULTILINE)
        assert health, name
        assert "/healthz" in health[-1] and "urllib" in health[-1]
        assert "COPY --from=export /models /models" in own
        assert f"COPY --from={name}-deps /opt/venv /opt/venv" in own
        assert "COPY --from=app /opt/app /opt/app" in own
        # no torch, no compilers, no pip in the final stages
        assert "torch" not in body.lower()
        assert not re.search(r"\b(gcc|g\+\+|build-essential|python3-dev|python3-pip)\b", body)
        for line in resolved(s, name):
            if "pip install" in line or "apt-get" in line:
                raise AssertionError(f"package install in final stage {name}: {line}")


def test_layers_most_stable_first() -> None:
    """Dependencies, then models, then the application: a code change re-ships one small
    layer. The export verifies on the server's engines and photos, so it copies server/
    whole, after its dependencies are installed."""
    s = stages()
    for name in ("cpu", "gpu"):
        copies = [line.split()[1] for line in s[name] if line.startswith("COPY --from=")]
        assert copies == [f"--from={name}-deps", "--from=export", "--from=app"], copies
    export = s["export"]
    copies = [line for line in export if line.startswith("COPY ")]
    assert "COPY server/ server/" in copies
    installs = [i for i, line in enumerate(export) if "pip install" in line and "-r" in line]
    assert installs and installs[-1] < export.index("COPY server/ server/")


def test_base_images_pinned() -> None:
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", text, re.MULTILINE))
    # One base for both images: the GPU runtime comes from NVIDIA's pip wheels.
    assert args.keys() == {"PYTHON_IMAGE"}, args
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", args["PYTHON_IMAGE"]), args
    for image in re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE):
        assert image.startswith("${") or ":" in image or image in stages() or image == "scratch", (
            f"unpinned base {image}"
        )
        assert not image.endswith(":latest")


def test_onnxruntime_and_torch_pins() -> None:
    text = DOCKERFILE.read_text()
    gpu = re.search(r"^ARG ORT_GPU_VERSION=(\d+)\.(\d+)\.(\d+)$", text, re.MULTILINE)
    cpu = re.search(r"^ARG ORT_VERSION=(\S+)$", text, re.MULTILINE)
    assert gpu and cpu, "onnxruntime and onnxruntime-gpu must be pinned"
    assert cpu.group(1) == ".".join(gpu.groups()), "the same onnxruntime on CPU and GPU"
    # onnxruntime-gpu >= 1.24 on PyPI is the CUDA 13 + cuDNN 9 build; its extras bring exactly
    # those libraries as pip wheels (see the Dockerfile header).
    assert (int(gpu.group(1)), int(gpu.group(2))) >= (1, 24)
    assert '"onnxruntime-gpu[cuda,cudnn]==${ORT_GPU_VERSION}"' in text
    assert re.search(r"^ARG TORCH_VERSION=2\.13\.0$", text, re.MULTILINE)
    # The CPU build of torch only (PyPI's pulls the CUDA stack), from PyTorch's index unless a
    # local wheel is offered through the torch-wheels build context.
    assert re.search(
        r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cpu$", text, re.MULTILINE
    )
    assert '"torch==${TORCH_VERSION}+cpu"' in text
    assert re.search(r"^FROM scratch AS torch-wheels$", text, re.MULTILINE)


def test_cpu_image_installs_the_openvino_extra() -> None:
    assert re.search(r"^ARG CPU_EXTRAS=openvino$", DOCKERFILE.read_text(), re.MULTILINE)


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


def test_requirements_script_extras_list() -> None:
    def reqs(extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "docker/requirements.py",
                "--ort",
                "onnxruntime==1.31.1",
                "--extra",
                extra,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )

    base = reqs("").stdout.split()  # CPU_EXTRAS="" : no optional group
    assert not any(r.startswith(("openvino", "torch")) for r in base), base
    both = reqs("export openvino").stdout.split()
    added = set(both) - set(base)
    assert "torch==2.13.0" in added and any(r.startswith("openvino==") for r in added), both
    bad = reqs("nope")
    assert bad.returncode != 0
    assert "no optional-dependencies group 'nope'" in bad.stderr


def test_dockerignore_is_an_allow_list() -> None:
    lines = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed <= {"pyproject.toml", "README.md", "contract", "server", "export", "docker"}, (
        allowed
    )
    # everything the Dockerfile COPYs from the context is allowed
    for src in re.findall(
        r"^COPY (?!--from)(?:--\S+ )*(\S+) ", DOCKERFILE.read_text(), re.MULTILINE
    ):
        assert src.split("/")[0].rstrip("/") in allowed, src
