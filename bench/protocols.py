"""The same image through the three front doors of ONE server, side by side:

- ``/predict``: the JPEG (decoded and preprocessed on the server);
- v2 REST binary: the photo's 224x224 crop as ``images`` UINT8 ``[1,224,224,3]`` after the JSON
  header (binary tensor data extension), as ``tritonclient.http`` sends it;
- gRPC binary: the same crop as ``images`` in ``raw_input_contents``, as ``tritonclient.grpc``
  sends it.

Each at concurrency 1 and 8, closed loop, interleaved in two rounds (so drift on a shared
machine hits every protocol alike); throughput, p50 and p99 from the client, and from the
server's own metrics over each phase: its request duration (the handler, from the request's
arrival in the route or servicer to its answer) and the part of that inside the pipeline
(queue wait + decode + batch execution, means). ``mean - pipeline`` is what a protocol's path
costs over the in-process pipeline (client, transport, framework, parsing, encoding);
``mean - server`` the part of it outside the handler. ``server CPU ms/req``: the server
process's CPU time over the phase (warm-up included) per request answered in it, less
sensitive to a shared machine than the latencies. At c=8 both also hold size-biased
batch time (a request is more often in a large batch than the per-batch mean says). The load client is this process
(asyncio: bench.load's raw HTTP/1.1 client, grpc.aio for gRPC), with prebuilt requests; only
it and the server run during a phase.

    python -m bench.protocols [--model-dir models] [--model resnet18] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from contract.images.preprocess import preprocess
from contract.modelmeta import parse_metadata
from contract.onnxfile import read_metadata_props

from .images import photo
from .load import PhaseResult, Target, closed_loop
from .metrics import breakdown, scrape
from .procs import ServerProc, free_port, start

LEVELS = (1, 8)
ROUNDS = 2
WARMUP_S = 1.5
PROTOCOLS = ("/predict JPEG", "v2 REST binary", "gRPC binary")


@dataclass(frozen=True)
class V2Target(Target):
    """A v2 binary request: the JSON header's length goes in its own HTTP header."""

    header_length: int = 0

    def request_bytes(self) -> bytes:
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Type: {self.content_type}\r\nContent-Length: {len(self.body)}\r\n"
            f"Inference-Header-Content-Length: {self.header_length}\r\n\r\n"
        )
        return head.encode() + self.body


def v2_body(crop: np.ndarray) -> tuple[bytes, int]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [1, *crop.shape],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": crop.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + crop.tobytes(), len(header)


async def grpc_closed_loop(
    address: str, model: str, crop: np.ndarray, concurrency: int, seconds: float
) -> PhaseResult:
    """``concurrency`` callers on one channel (as one tritonclient.grpc client), each sending
    the next ModelInfer when the last returns; the request message is built once."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc  # the client's own stubs

    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="images", datatype="UINT8", shape=[1, *crop.shape])
    request.raw_input_contents.append(crop.tobytes())
    result = PhaseResult("gRPC binary", model, "closed", concurrency, seconds)
    async with grpc.aio.insecure_channel(address) as channel:
        infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        t0 = time.perf_counter() + WARMUP_S
        t1 = t0 + seconds

        async def caller() -> None:
            while (sent := time.perf_counter()) < t1:
                try:
                    await infer(request, timeout=60)
                except grpc.aio.AioRpcError:
                    if sent >= t0:
                        result.errors += 1
                    continue
                if sent >= t0:
                    result.ok += 1
                    result.latencies.append(time.perf_counter() - sent)

        tasks = [asyncio.create_task(caller()) for _ in range(concurrency)]
        await asyncio.sleep(WARMUP_S)
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*tasks)
        result.client_cpu = (time.process_time() - cpu) / (time.perf_counter() - wall)
    return result


@dataclass
class Row:
    protocol: str
    level: int
    rates: list[float]
    p50: list[float]
    p99: list[float]
    mean_s: list[float]
    server_s: list[float]
    pipeline_s: list[float]
    batch: list[float]
    cpu_ms: list[float]


def run_phase(
    srv: ServerProc,
    grpc_port: int,
    model: str,
    protocol: str,
    level: int,
    seconds: float,
    jpeg: bytes,
    crop: np.ndarray,
) -> tuple[PhaseResult, dict[str, float]]:
    before, cpu = scrape(srv.url, model), srv.cpu_seconds()
    if protocol == "gRPC binary":
        phase = asyncio.run(grpc_closed_loop(f"127.0.0.1:{grpc_port}", model, crop, level, seconds))
    else:
        if protocol == "/predict JPEG":
            target: Target = Target(
                protocol, model, srv.port, f"/predict/{model}", jpeg, "image/jpeg"
            )
        else:
            body, n = v2_body(crop)
            target = V2Target(
                protocol,
                model,
                srv.port,
                f"/v2/models/{model}/infer",
                body,
                "application/octet-stream",
                header_length=n,
            )
        phase = asyncio.run(closed_loop(target, level, seconds, WARMUP_S))
    cpu = srv.cpu_seconds() - cpu
    b = breakdown(before, scrape(srv.url, model))
    decode_s = 0.0 if math.isnan(b.preprocess_s) else b.preprocess_s  # binary tensors: none
    return phase, {
        "server_s": b.request_s,
        "pipeline_s": b.queue_s + decode_s + b.inference_s,
        "batch": b.mean_batch,
        "mean_s": statistics.fmean(phase.latencies) if phase.latencies else math.nan,
        "cpu_ms": cpu / b.requests * 1e3 if b.requests else math.nan,
    }


def table(rows: list[Row]) -> str:
    med = statistics.median
    lines = [
        "| protocol | c | images/s (round 1 / 2) | p50 ms | p99 ms | mean ms | server ms | "
        "pipeline ms | mean - pipeline ms | mean - server ms | mean batch | server CPU ms/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rates = " / ".join(f"{x:.1f}" for x in r.rates)
        lines.append(
            f"| {r.protocol} | {r.level} | {med(r.rates):.1f} ({rates}) | {med(r.p50) * 1e3:.1f} | "
            f"{med(r.p99) * 1e3:.1f} | {med(r.mean_s) * 1e3:.1f} | {med(r.server_s) * 1e3:.1f} | "
            f"{med(r.pipeline_s) * 1e3:.1f} | {(med(r.mean_s) - med(r.pipeline_s)) * 1e3:.1f} | "
            f"{(med(r.mean_s) - med(r.server_s)) * 1e3:.1f} | {med(r.batch):.2f} | "
            f"{med(r.cpu_ms):.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.protocols", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--model-dir", type=Path, default=Path("models"))
    p.add_argument("--model", default="resnet18")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per phase")
    args = p.parse_args(argv)
    jpeg = photo("chelsea", (500, 375)).jpeg
    spec = parse_metadata(read_metadata_props(args.model_dir / f"{args.model}.onnx")).preprocessing
    crop = np.ascontiguousarray(preprocess(jpeg, spec))  # what /predict makes of the JPEG
    port, grpc_port = free_port(), free_port()
    log_dir = Path("bench/out")
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "RESNET_MODEL_DIR": str(args.model_dir.resolve()),
        "RESNET_MODELS": args.model,
        "RESNET_DEFAULT_MODEL": args.model,
        "RESNET_PORT": str(port),
        "RESNET_GRPC_PORT": str(grpc_port),
        "RESNET_PROVIDER": "cpu",
        "RESNET_UI": "false",
    }
    srv = start("protocols", ["-m", "server"], env, port, log_dir)
    rows = {
        (proto, c): Row(proto, c, [], [], [], [], [], [], [], [])
        for c in LEVELS
        for proto in PROTOCOLS
    }
    try:
        srv.wait_ready("/readyz")
        for rnd in range(ROUNDS):
            for c in LEVELS:
                for proto in PROTOCOLS:
                    phase, srv_side = run_phase(
                        srv, grpc_port, args.model, proto, c, args.seconds, jpeg, crop
                    )
                    row = rows[(proto, c)]
                    row.rates.append(phase.throughput)
                    row.p50.append(phase.pct(50))
                    row.p99.append(phase.pct(99))
                    row.mean_s.append(srv_side["mean_s"])
                    row.server_s.append(srv_side["server_s"])
                    row.pipeline_s.append(srv_side["pipeline_s"])
                    row.batch.append(srv_side["batch"])
                    row.cpu_ms.append(srv_side["cpu_ms"])
                    print(
                        f"round {rnd + 1} c={c} {proto:16s} {phase.throughput:6.1f}/s "
                        f"p50 {phase.pct(50) * 1e3:6.1f} ms p99 {phase.pct(99) * 1e3:6.1f} ms "
                        f"errors {phase.errors + phase.rejected} client {phase.client_cpu:.2f} cores",
                        flush=True,
                    )
    finally:
        srv.stop()
    print()
    print(table(list(rows.values())))


if __name__ == "__main__":
    main()
