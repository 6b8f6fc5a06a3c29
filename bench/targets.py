"""Start the servers under test (ours and the peers) for one model, and describe their
request (:class:`bench.load.Target`)."""

from __future__ import annotations

import base64
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import httpx

from . import procs
from .config import BenchConfig
from .load import Target

SERVER = "server"
NAIVE = "naive"
LITSERVE = "litserve"
DELAY = "server-delay"


@dataclass
class Running:
    """A started server and the request it is benchmarked with."""

    proc: procs.ServerProc
    target: Target


def server_env(
    cfg: BenchConfig, model_dir: Path, model: str, port: int, **extra: str
) -> dict[str, str]:
    """RESNET_* settings of our server for the benchmark (defaults otherwise)."""
    env = {
        "RESNET_MODEL_DIR": str(model_dir.resolve()),
        "RESNET_MODELS": model,
        "RESNET_DEFAULT_MODEL": model,
        "RESNET_HOST": "127.0.0.1",
        "RESNET_PORT": str(port),
        "RESNET_LOG_LEVEL": "warning",
        "RESNET_MAX_BATCH_SIZE": str(cfg.max_batch_size),
    }
    if cfg.intra_op_threads:
        env["RESNET_INTRA_OP_THREADS"] = str(cfg.intra_op_threads)
    if cfg.gpu:
        env.update(RESNET_PROVIDER="cuda", RESNET_ALLOW_CPU_FALLBACK="false")
    env.update(extra)
    return env


def litserve_available() -> bool:
    return importlib.util.find_spec("litserve") is not None


def start(
    kind: str, cfg: BenchConfig, model_dir: Path, model: str, jpeg: bytes, log_dir: Path
) -> Running:
    """Start server ``kind`` serving ``model``; returns once it is ready."""
    port = procs.free_port()
    path = model_dir / f"{model}.onnx"
    peer_args = ["--model-path", str(path.resolve()), "--port", str(port),
                 "--threads", str(cfg.intra_op_threads),
                 "--max-batch-size", str(cfg.max_batch_size),
                 "--batch-timeout-ms", str(cfg.batching_delay_ms)]  # fmt: skip
    if kind in (SERVER, DELAY):
        extra = {}
        if kind == DELAY:
            extra = {
                "RESNET_BATCHING": "delay",
                "RESNET_MAX_QUEUE_DELAY_MS": str(cfg.batching_delay_ms),
            }
        env = server_env(cfg, model_dir, model, port, **extra)
        proc = procs.start(kind, ["-m", "server"], env, port, log_dir)
        ready = "/readyz"
        target = Target(kind, model, port, f"/predict/{model}", jpeg, "image/jpeg")
    elif kind == NAIVE:
        proc = procs.start(kind, ["-m", "bench.peers.naive", *peer_args], {}, port, log_dir)
        ready = "/healthz"
        target = Target(kind, model, port, f"/predict/{model}", jpeg, "image/jpeg")
    elif kind == LITSERVE:
        proc = procs.start(kind, ["-m", "bench.peers.litserve_app", *peer_args], {}, port, log_dir)
        ready = "/health"
        body = json.dumps({"image": base64.b64encode(jpeg).decode()}).encode()
        target = Target(kind, model, port, "/predict", body, "application/json")
    else:
        raise ValueError(f"unknown server kind {kind!r}")
    try:
        proc.wait_ready(ready)
        check = httpx.post(proc.url + target.path, content=target.body,
                           headers={"content-type": target.content_type}, timeout=60)  # fmt: skip
        if check.status_code != 200:
            raise RuntimeError(f"{kind}: test request got {check.status_code}: {check.text[:300]}")
    except BaseException:
        proc.stop()
        raise
    return Running(proc, target)


def batching_policy(url: str, model: str) -> dict[str, object]:
    """The batching block of ``GET /models`` for ``model`` (what ``auto`` resolved to)."""
    for m in httpx.get(url + "/models", timeout=10).json()["models"]:
        if m["name"] == model:
            return dict(m["batching"])
    return {}
