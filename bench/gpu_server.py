"""The server on the GPU under load: throughput, p99 and where the time goes, per phase.

``python -m bench.gpu_server MODEL_DIR --out server.json`` (``bench/gpu_session.sh`` runs it on
the lent GPU machine; docs/BENCHMARKS.md, "GPU" section). Load comes from ``hey`` (closed loop:
``-c`` connections for ``--seconds``), so the client is not the Python being measured. Each
phase records hey's requests/s, p50/p99 and status codes, the server's own metrics over the
phase (mean queue, preprocess and inference seconds, mean batch) and the CPU each group of the
server's threads used (event loop, decode, runner, ONNX Runtime), from ``/proc``.

Phases: ``/predict`` with one JPEG per request (the 500x375 chelsea photo) at rising
concurrency; the v2 binary path with ``images`` UINT8 ``[N, 224, 224, 3]`` (decode-free: what
the GPU path costs without JPEG); then the same with two ONNX Runtime instances; then several
server processes side by side (one per ``--procs`` slice of the cores), to see what a
multi-process server would reach where one event loop is the cap; then the built-in
``workers`` mode against one process (``--only-workers`` runs just that, on any provider).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import metrics, threads
from bench.images import photo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(model_dir: Path, log: Path, provider: str, **settings: object) -> tuple[Any, str]:
    """Start a server process; returns (process, base URL) without waiting for readiness."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESNET_")}
    env.update(
        RESNET_MODEL_DIR=str(model_dir),
        RESNET_PORT=str(port),
        RESNET_HOST="127.0.0.1",
        RESNET_PROVIDER=provider,
        RESNET_ALLOW_CPU_FALLBACK="false",
        RESNET_LOG_LEVEL="warning",
        RESNET_UI="false",
    )
    env.update({f"RESNET_{k.upper()}": str(v) for k, v in settings.items()})
    proc = subprocess.Popen(
        [sys.executable, "-m", "server"], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: Any, url: str, log: Path) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"server not ready in 240 s: {log.read_text()[-3000:]}")


def start(model_dir: Path, log: Path, provider: str, **settings: object) -> tuple[Any, str]:
    proc, url = launch(model_dir, log, provider, **settings)
    wait_ready(proc, url, log)
    return proc, url


def stop(proc: Any) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def v2_body(n: int) -> tuple[bytes, int]:
    """A Triton binary request: JSON header then ``n`` uint8 crops; returns (body, header len)."""
    x = np.random.default_rng(n).integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": list(x.shape),
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"classification": 5}}],
        }
    ).encode()
    return header + x.tobytes(), len(header)


def hey_cmd(
    url: str, body: Path, content_type: str, c: int, seconds: float, headers: tuple[str, ...] = ()
) -> list[str]:
    """``hey``: ``c`` connections POSTing ``body`` to ``url`` for ``seconds``."""
    cmd = [
        HEY,
        "-z",
        f"{seconds}s",
        "-c",
        str(c),
        "-m",
        "POST",
        "-T",
        content_type,
        "-D",
        str(body),
        "-t",
        "30",
    ]
    for h in headers:
        cmd += ["-H", h]
    return [*cmd, url]


def parse_hey(out: str) -> dict[str, Any]:
    """Requests/s, p50/p99 (seconds) and status codes from hey's report."""
    codes = {m[0]: int(m[1]) for m in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}% in ([\d.]+) secs", out)
        return float(m.group(1)) if m else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50_s": pct("50"),
        "p99_s": pct("99"),
        "codes": codes,
        "hey_tail": out[-400:] if not codes else "",
    }


def hey(
    url: str, body: Path, content_type: str, c: int, seconds: float, headers: tuple[str, ...] = ()
) -> dict[str, Any]:
    cmd = hey_cmd(url, body, content_type, c, seconds, headers)
    return parse_hey(
        subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    )


def phase(
    proc: Any, url: str, model: str, name: str, images_per_request: int, load: dict[str, Any]
) -> dict[str, Any]:
    """Run ``load`` (hey's arguments) against ``url`` and record what the server did."""
    m0, t0, w0 = metrics.scrape(url, model), threads.sample(proc.pid), time.monotonic()
    r = hey(**load)
    m1, t1, w1 = metrics.scrape(url, model), threads.sample(proc.pid), time.monotonic()
    use = threads.usage(proc.pid, t0, t1, w1 - w0, [model], {})
    b = metrics.breakdown(m0, m1)
    ok = r["codes"].get("200", 0)
    row = {
        "phase": name,
        "model": model,
        "concurrency": load["c"],
        "images_per_request": images_per_request,
        **r,
        "images_per_s": r["rps"] * images_per_request * (ok / max(1, sum(r["codes"].values()))),
        "server": asdict(b),
        "cpu_cores": {g: s / use.wall_s for g, s in use.cpu_s.items()},
        "loop_utilisation": use.loop_utilisation,
    }
    print(
        f"{name:28s} {model:14s} c={load['c']:3d}: {row['images_per_s']:8.1f} img/s "
        f"{r['rps']:8.1f} req/s p50 {r['p50_s'] * 1e3:7.1f} ms p99 {r['p99_s'] * 1e3:7.1f} ms "
        f"codes {r['codes']} batch {b.mean_batch:.1f} queue {b.queue_s * 1e3:.1f} ms "
        f"pre {b.preprocess_s * 1e3:.1f} ms inf {b.inference_s * 1e3:.1f} ms "
        f"loop {use.loop_utilisation:.2f} cores "
        + " ".join(f"{g}={v:.2f}" for g, v in row["cpu_cores"].items()),
        flush=True,
    )
    return row


def single(args: argparse.Namespace, work: Path, instances: int, phases: list[Any]) -> list[Any]:
    settings: dict[str, object] = dict(
        instances=instances,
        max_batch_size=128,
        max_queue_size=2048,
        max_concurrent_requests=2048,
        agreement_check=args.agreement_check,
        pad_batches=args.pad_batches,
    )
    rows: list[Any] = []
    try:
        proc, url = start(
            args.model_dir, work / f"server-{instances}.log", args.provider, **settings
        )
    except RuntimeError as e:  # measure all the same, and say why the check refused
        print(
            f"server x{instances} did not start: {e}\nagain with agreement_check=false", flush=True
        )
        rows.append({"start_failed": str(e)})
        proc, url = start(
            args.model_dir,
            work / f"server-{instances}b.log",
            args.provider,
            **{**settings, "agreement_check": "false"},
        )
    try:
        rows.append({"models": httpx.get(url + "/models", timeout=10).json()})
        for name, model, n, body, ctype, headers, c in phases:
            path = (
                f"/predict/{model}" if name.startswith("predict") else f"/v2/models/{model}/infer"
            )
            load = dict(
                url=url + path,
                body=body,
                content_type=ctype,
                c=c,
                seconds=args.seconds,
                headers=headers,
            )
            try:
                rows.append(phase(proc, url, model, f"{name} x{instances}", n, load))
            except Exception as e:  # reported; the rest runs
                print(f"{name} {model} c={c}: FAILED {type(e).__name__}: {e}", flush=True)
    finally:
        stop(proc)
    return rows


def multi(args: argparse.Namespace, work: Path, jpeg: Path) -> dict[str, Any]:
    """``--procs`` servers, each with cores/procs cores, loaded at once: summed images/s."""
    cores = max(1, (os.cpu_count() or 2) // args.procs)
    logs = [work / f"server-p{i}.log" for i in range(args.procs)]
    servers = [
        launch(
            args.model_dir,
            log,
            args.provider,
            cores=cores,
            max_batch_size=64,
            max_queue_size=1024,
            agreement_check=args.agreement_check,
            pad_batches=args.pad_batches,
        )
        for log in logs
    ]
    for (proc, url), log in zip(servers, logs, strict=True):
        wait_ready(proc, url, log)
    try:
        loads = [
            subprocess.Popen(
                hey_cmd(url + "/predict/resnet50", jpeg, "image/jpeg", 32, args.seconds),
                stdout=subprocess.PIPE,
                text=True,
            )
            for _, url in servers
        ]
        answers = [parse_hey(p.communicate(timeout=args.seconds + 60)[0]) for p in loads]
        rps = [a["rps"] for a in answers]
        codes = [a["codes"] for a in answers]
    finally:
        for proc, _ in servers:
            stop(proc)
    row = {
        "procs": args.procs,
        "cores_each": cores,
        "rps_each": rps,
        "rps_total": sum(rps),
        "codes": codes,
    }
    print(
        f"{args.procs} processes x {cores} cores, /predict resnet50 JPEG c=32 each: "
        f"{sum(rps):.1f} img/s total {rps} codes {codes}",
        flush=True,
    )
    return row


def workers_ab(args: argparse.Namespace, work: Path, jpeg: Path) -> dict[str, Any]:
    """One server process against one with ``--procs`` workers (``RESNET_WORKERS``), the same
    cores, both started at once and loaded in turn, ``--rounds`` interleaved rounds of JPEG
    ``/predict`` at concurrency 1 and 32 per worker; medians and their ratio per level."""
    common = dict(
        max_batch_size=64,
        max_queue_size=1024,
        max_concurrent_requests=2048,
        agreement_check=args.agreement_check,
        pad_batches=args.pad_batches,
    )
    kinds = {"1 process": 1, f"{args.procs} workers": args.procs}
    logs = {k: work / f"server-w{n}.log" for k, n in kinds.items()}
    servers = {
        k: launch(args.model_dir, logs[k], args.provider, workers=n, log_level="info", **common)
        for k, n in kinds.items()
    }
    levels = (1, 32 * args.procs)
    rows: dict[tuple[str, int], list[dict[str, Any]]] = {(k, c): [] for k in kinds for c in levels}
    try:
        for k, (proc, url) in servers.items():
            wait_ready(proc, url, logs[k])
        # Workers past the first accept once loaded: wait for all of them.
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and any(
            f"[worker {i}]: ready" not in logs[k].read_text(errors="replace")
            for k, n in kinds.items()
            if n > 1
            for i in range(n)
        ):
            time.sleep(0.5)
        for _ in range(args.rounds):
            for (k, c), got in rows.items():
                r = hey(
                    servers[k][1] + f"/predict/{args.model}", jpeg, "image/jpeg", c, args.seconds
                )
                got.append(r)
                print(
                    f"{k:12s} /predict {args.model} JPEG c={c:3d}: {r['rps']:8.1f} img/s "
                    f"p50 {r['p50_s'] * 1e3:7.1f} ms p99 {r['p99_s'] * 1e3:7.1f} ms "
                    f"codes {r['codes']}",
                    flush=True,
                )
    finally:
        for proc, _ in servers.values():
            stop(proc)
    out: dict[str, Any] = {"model": args.model, "cpus": os.cpu_count(), "levels": {}}
    for c in levels:
        med = {k: float(np.median([r["rps"] for r in rows[(k, c)]])) for k in kinds}
        one, many = med.values()
        out["levels"][c] = {
            "median_rps": med,
            "ratio": many / max(one, 1e-9),
            "rounds": {k: rows[(k, c)] for k in kinds},
        }
        print(
            f"c={c}: median images/s {med}: {args.procs} workers = "
            f"{many / max(one, 1e-9):.2f}x one process",
            flush=True,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    global HEY
    p = argparse.ArgumentParser(prog="python -m bench.gpu_server")
    p.add_argument("model_dir", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--provider", default="cuda")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--hey", default=shutil.which("hey") or "hey")
    p.add_argument("--quick", action="store_true", help="two phases only (a dry run)")
    p.add_argument("--agreement-check", default="true", choices=["true", "false"])
    p.add_argument("--pad-batches", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--no-two-instances", action="store_true")
    p.add_argument(
        "--only-workers",
        action="store_true",
        help="only one process against --procs workers (workers_ab)",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", default="resnet50", help="the model of the workers comparison")
    args = p.parse_args(argv)
    HEY = args.hey
    work = args.out.parent
    jpeg = work / "chelsea.jpg"
    jpeg.write_bytes(photo("chelsea", (500, 375)).jpeg)
    bodies: dict[int, tuple[Path, str, tuple[str, ...]]] = {}
    for n in (1, 32):
        body, hlen = v2_body(n)
        (work / f"v2-{n}.bin").write_bytes(body)
        bodies[n] = (
            work / f"v2-{n}.bin",
            "application/octet-stream",
            (f"Inference-Header-Content-Length: {hlen}",),
        )
    if args.only_workers:
        args.out.write_text(json.dumps(workers_ab(args, work, jpeg), indent=1, default=str))
        return 0
    j: tuple[Path, str, tuple[str, ...]] = (jpeg, "image/jpeg", ())
    v1, v32 = bodies[1], bodies[32]
    # (name, model, images per request, body file, content type, headers, concurrency)
    phases = [("predict jpeg", "resnet50", 1, *j, c) for c in (1, 16, 64, 256)]
    phases += [("v2 binary", "resnet50", 1, *v1, c) for c in (16, 64, 256)]
    phases += [("v2 binary", "resnet50", 32, *v32, c) for c in (1, 4, 16)]
    phases += [
        ("predict jpeg", "resnet18", 1, *j, 64),
        ("predict jpeg", "resnet50-fp16", 1, *j, 64),
        ("v2 binary", "resnet50-fp16", 32, *v32, 16),
    ]
    phases = [ph for ph in phases if (args.model_dir / f"{ph[1]}.onnx").exists()]
    if args.quick:
        phases = phases[:1] + phases[7:8]
    result: dict[str, Any] = {"cpus": os.cpu_count(), "single": single(args, work, 1, phases)}
    args.out.write_text(json.dumps(result, indent=1, default=str))
    if not args.quick and not args.no_two_instances:
        two = [
            ph
            for ph in phases
            if (ph[1] == "resnet50" and (ph[2], ph[6]) in ((32, 4), (32, 16)))
            or (ph[:2] == ("predict jpeg", "resnet50") and ph[6] == 64)
        ]
        result["two_instances"] = single(args, work, 2, two)
        args.out.write_text(json.dumps(result, indent=1, default=str))
    for key, measure in (("multi_process", multi), ("workers", workers_ab)):
        try:
            result[key] = measure(args, work, jpeg)
        except Exception as e:
            print(f"{key}: FAILED {type(e).__name__}: {e}", flush=True)
        args.out.write_text(json.dumps(result, indent=1, default=str))
    args.out.write_text(json.dumps(result, indent=1, default=str))
    return 0


HEY = "hey"

if __name__ == "__main__":
    sys.exit(main())
