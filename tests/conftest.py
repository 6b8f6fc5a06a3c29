"""Fixtures shared by the integration suites: exported models and real server processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broken_model_dir(model_dir: Path, tmp_path: Path) -> Path:
    """resnet18 beside a file named ``.onnx`` that is not ONNX."""
    broken = tmp_path / "models"
    broken.mkdir()
    (broken / "resnet18.onnx").symlink_to(model_dir / "resnet18.onnx")
    (broken / "zz_broken.onnx").write_bytes(b"this is not an ONNX file")
    return broken


def export_models(out_dir: Path, names: tuple[str, ...] = ("resnet18", "resnet50")) -> Path:
    """Export seeded random-weight models (no network needed) unless they already exist."""
    missing = [n for n in names if not (out_dir / f"{n}.onnx").exists()]
    if missing:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "export",
                *missing,
                "--weights",
                "random",
                "--seed",
                "0",
                "--out-dir",
                str(out_dir),
            ],
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
    return out_dir


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both models, exported once per test session (or taken from RESNET_TEST_MODEL_DIR)."""
    given = os.environ.get("RESNET_TEST_MODEL_DIR")
    out = Path(given) if given else tmp_path_factory.mktemp("models")
    return export_models(out)


@pytest.fixture(scope="session")
def resnet18_seed1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second resnet18 (random weights, seed 1): another version whose answers differ from
    the session's seed-0 file, so an answer says which version ran it."""
    return _seed1(tmp_path_factory.mktemp("seed1"))


def _seed1(out: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            "resnet18",
            "--weights",
            "random",
            "--seed",
            "1",
            "--out-dir",
            str(out),
        ],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    return out / "resnet18.onnx"


def versioned_dir(tmp_path: Path, versions: dict[int, Path], name: str = "resnet18") -> Path:
    """``tmp_path/models/<name>/<v>/model.onnx`` linked to each of ``versions``' files."""
    root = tmp_path / "models"
    for v, path in versions.items():
        (root / name / str(v)).mkdir(parents=True)
        (root / name / str(v) / "model.onnx").symlink_to(path)
    return root


@pytest.fixture(scope="session")
def int8_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``python -m export resnet18 --weights random --precision int8`` (seed 0, provider auto,
    the default calibration photos), once per session: its file and what the command printed."""
    out = tmp_path_factory.mktemp("int8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            "resnet18",
            "--weights",
            "random",
            "--seed",
            "0",
            "--precision",
            "int8",
            "--out-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out / "resnet18-int8.onnx", result.stdout


@pytest.fixture(scope="session")
def variant_dir(
    model_dir: Path, int8_export: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """resnet18 in fp32 and its INT8 export, side by side (links to the session's files)."""
    out = tmp_path_factory.mktemp("variants")
    (out / "resnet18.onnx").symlink_to(model_dir / "resnet18.onnx")
    (out / "resnet18-int8.onnx").symlink_to(int8_export[0])
    return out


@dataclass
class ServerProcess:
    """A real ``python -m server`` on 127.0.0.1; ``log`` holds its combined output so far."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    grpc_port: int = 0
    """the gRPC port (0: gRPC off); ``grpc_url`` is what ``tritonclient.grpc`` takes"""

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    _client: httpx.Client | None = None

    def client(self) -> httpx.Client:
        """A shared client for this server, closed by ``stop``."""
        if self._client is None:
            self._client = httpx.Client(base_url=self.url, timeout=60)
        return self._client

    def new_client(self) -> httpx.Client:
        """A private client (for threads); the caller closes it."""
        return httpx.Client(base_url=self.url, timeout=60)

    def rss_bytes(self) -> int:
        fields = Path(f"/proc/{self.proc.pid}/status").read_text().split("\n")
        kb = next(line for line in fields if line.startswith("VmRSS:")).split()[1]
        return int(kb) * 1024

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log}")
            try:
                if self.client().get("/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready in {timeout}s:\n{self.log}")

    def exit_status(self, timeout: float) -> int:
        """Wait for the server to exit on its own (a startup failure); stopped either way."""
        try:
            return self.proc.wait(timeout)
        finally:
            self.stop()

    def stop(self, timeout: float = 30) -> int:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(
    model_dir: Path,
    tmp_path: Path,
    *,
    module: str = "server",
    wait: bool = True,
    **settings: object,
) -> ServerProcess:
    """Start a server with ``settings`` as RESNET_* environment variables. gRPC listens on a
    free port of its own unless ``grpc_port`` is given (0 = off): never the default 8001,
    which parallel test servers would fight over."""
    port = free_port()
    while "grpc_port" not in settings:
        other = free_port()
        if other != port:
            settings["grpc_port"] = other
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESNET_")}
    # provider cpu unless a test asks for another: most suites compare answers with a direct
    # ONNX Runtime session bit for bit; tests/integration/test_engines.py covers openvino.
    env.update(
        RESNET_MODEL_DIR=str(model_dir),
        RESNET_PORT=str(port),
        RESNET_HOST="127.0.0.1",
        RESNET_INTRA_OP_THREADS="2",
        RESNET_LOG_LEVEL="info",
        RESNET_PROVIDER="cpu",
    )
    env.update({f"RESNET_{k.upper()}": str(v) for k, v in settings.items()})
    log_path = tmp_path / f"server-{port}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    grpc_port = int(env["RESNET_GRPC_PORT"])
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path, env, grpc_port)
    if wait:
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
    return server


@pytest.fixture(scope="session")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One shared server on both models, default settings but a small delay-policy batcher so
    concurrent requests visibly batch."""
    srv = start_server(
        model_dir,
        tmp_path_factory.mktemp("server"),
        batching="delay",
        max_queue_delay_ms=30,
        max_batch_size=8,
        max_queue_size=64,
        warmup_batch_sizes="1,8",
    )
    yield srv
    srv.stop()
