"""Start the servers under test (ours and the peers) for one variant, and describe their
request (:class:`bench.load.Target`)."""

from __future__ import annotations

import base64
import importlib.util
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from . import procs
from .config import BenchConfig
from .load import Target
from .threads import THREAD_LOG_ENV
from .variants import Variant

SERVER = "server"
NAIVE = "naive"
LITSERVE = "litserve"
DELAY = "server-delay"
OVERLOAD = "server-overload"
"""prefix of the overload configurations of our server (``server-overload 1000 ms``)"""
SPLIT = "split"
"""prefix of the thread-split configurations of our server (``split intra 1 / pre 1``)"""


def ours(kind: str) -> bool:
    """True for every configuration of our server (it has our metrics)."""
    return kind in (SERVER, DELAY) or kind.startswith((OVERLOAD, SPLIT))


@dataclass
class Running:
    """A started server and the request it is benchmarked with. ``thread_log``: where it
    records its Python threads (see :mod:`bench.threads`); ``flags``: our server's settings
    given on its command line."""

    proc: procs.ServerProc
    target: Target
    variant: Variant
    thread_log: Path | None = None
    flags: dict[str, str] = field(default_factory=dict)


def server_flags(
    cfg: BenchConfig, model_dir: Path, variant: Variant, port: int, **extra: str
) -> dict[str, str]:
    """Our server's settings for the benchmark, as ``--flag value`` pairs (defaults otherwise):
    ``--provider P --models NAME`` and the benchmark's batch size and threads."""
    flags = {
        "model-dir": str(model_dir.resolve()),
        "models": variant.model,
        "default-model": variant.model,
        "provider": variant.provider,
        "host": "127.0.0.1",
        "port": str(port),
        "log-level": "warning",
        "max-batch-size": str(cfg.max_batch_size),
    }
    if cfg.intra_op_threads:
        flags["intra-op-threads"] = str(cfg.intra_op_threads)
    if variant.provider == "cuda":
        flags["allow-cpu-fallback"] = "false"
    if not cfg.agreement_check:
        flags["agreement-check"] = "false"
    flags.update(extra)
    return flags


def litserve_available() -> bool:
    return importlib.util.find_spec("litserve") is not None


def start(
    kind: str,
    variant: Variant,
    cfg: BenchConfig,
    model_dir: Path,
    jpeg: bytes,
    log_dir: Path,
    **extra: str,
) -> Running:
    """Start server ``kind`` (ours, a configuration of ours, or a peer) serving ``variant``;
    returns once it is ready and has answered one request. ``extra``: more flags of ours."""
    port = procs.free_port()
    path = variant.path(model_dir)
    thread_log: Path | None = (
        log_dir / f"threads-{kind.replace(' ', '_').replace('/', '_')}-{port}.txt"
    )
    env = {THREAD_LOG_ENV: str(thread_log)}  # the naive peer and ours record their threads
    flags: dict[str, str] = {}
    peer_args = [
        "--model-path",
        str(path.resolve()),
        "--port",
        str(port),
        "--threads",
        str(cfg.intra_op_threads),
        "--provider",
        variant.provider,
        "--max-batch-size",
        str(cfg.max_batch_size),
        "--batch-timeout-ms",
        str(cfg.batching_delay_ms),
    ]
    if variant.engine_precision:
        peer_args += ["--precision", variant.engine_precision]
    if ours(kind):
        if kind == DELAY:
            extra = {
                "batching": "delay",
                "max-queue-delay-ms": f"{cfg.batching_delay_ms:g}",
                **extra,
            }
        flags = server_flags(cfg, model_dir, variant, port, **extra)
        args = [x for k, v in flags.items() for x in (f"--{k}", v)]
        proc = procs.start(kind, ["-m", "bench.serve", *args], env, port, log_dir)
        ready = "/readyz"
        target = Target(
            kind, variant.model, port, f"/predict/{variant.model}", jpeg, "image/jpeg", variant.key
        )
    elif kind == NAIVE:
        proc = procs.start(kind, ["-m", "bench.peers.naive", *peer_args], env, port, log_dir)
        ready = "/healthz"
        target = Target(
            kind, variant.model, port, f"/predict/{variant.arch}", jpeg, "image/jpeg", variant.key
        )
    elif kind == LITSERVE:
        proc = procs.start(kind, ["-m", "bench.peers.litserve_app", *peer_args], {}, port, log_dir)
        ready, thread_log = "/health", None
        body = json.dumps({"image": base64.b64encode(jpeg).decode()}).encode()
        target = Target(
            kind, variant.model, port, "/predict", body, "application/json", variant.key
        )
    else:
        raise ValueError(f"unknown server kind {kind!r}")
    try:
        proc.wait_ready(ready)
        first_request(proc.url + target.path, target.body, target.content_type, kind)
    except BaseException:
        proc.stop()
        raise
    return Running(proc, target, variant, thread_log, flags)


def first_request(
    url: str, body: bytes, content_type: str, kind: str, deadline_s: float = 60.0
) -> None:
    """POST the benchmark's request once and require a 200. A refusal that says when to come
    back (503/429 with ``Retry-After``) is retried until ``deadline_s``: servers start side by
    side, and one whose first request meets a short queue timeout while a neighbour warms up
    on the same cores refuses it, as it should under load.

    Raises RuntimeError: any other status, or still refused at the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        check = httpx.post(url, content=body, headers={"content-type": content_type}, timeout=60)
        if check.status_code == 200:
            return
        retry = check.headers.get("retry-after")
        if check.status_code not in (429, 503) or retry is None or time.monotonic() >= end:
            raise RuntimeError(f"{kind}: test request got {check.status_code}: {check.text[:300]}")
        time.sleep(min(max(float(retry), 0.1), 2.0))


def served_model(url: str, model: str) -> dict[str, Any]:
    """The ``GET /models`` entry of ``model``: precision, provider, engine, batching..."""
    for m in httpx.get(url + "/models", timeout=10).json()["models"]:
        if m["name"] == model:
            return dict(m)
    return {}
