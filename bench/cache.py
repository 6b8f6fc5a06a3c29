"""The response cache on a repeated-image workload, against the same server without it.

Workloads (closed loop, ``/predict/<model>`` JPEGs, each client cycling through its list):

- ``repeated``: 12 distinct thumbnails (the shipped photos at 4 sizes, ~10-40 KB), so after
  the first round every request of a cached server is a hit: what the cache buys where the
  same images come back (thumbnails, retries, a client re-asking).
- ``unique``: a different image every request (the photos re-encoded with a changing JPEG
  comment segment, so the pixels are the same but no two bodies hash alike): every request of a cached
  server is a miss, what the cache costs where nothing repeats (hashing plus the store).

Each workload runs on a server with ``response_cache_bytes`` 0 (off) and with 64 MiB (on),
interleaved in rounds (``--rounds``, default 2, the order of the two alternating); throughput, p50 and p99 from the client and the server's hit count.

    python -m bench.cache [--model-dir models] [--model resnet18] [--seconds 8] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from pathlib import Path

import httpx

from .images import PHOTO_NAMES, photo
from .load import Connection, PhaseResult, Target, _Counter, _one
from .procs import ServerProc, free_port, start

SIZES = ((160, 120), (224, 224), (320, 240), (400, 300))
WARMUP_S = 1.5
ROUNDS = 2
CACHE_BYTES = 64 * 2**20


def repeated_images() -> list[bytes]:
    return [photo(n, s).jpeg for n in PHOTO_NAMES for s in SIZES]


def unique_images(n: int, tag: str) -> list[bytes]:
    """``n`` bodies that all differ over the same pixels: each photo with a JPEG comment
    segment (``FF FE``, right after the start-of-image marker) naming ``tag`` and a counter."""
    base = repeated_images()
    out = []
    for i, jpeg in zip(range(n), itertools.cycle(base), strict=False):
        comment = f"{tag} {i}".encode()
        segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
        out.append(jpeg[:2] + segment + jpeg[2:])
    return out


async def rotating_loop(
    targets: list[Target], concurrency: int, seconds: float, warmup: float
) -> PhaseResult:
    """``concurrency`` clients, each sending the next of its share of ``targets`` (client
    ``k`` takes ``k``, ``k + concurrency``, ...: no two clients send the same one) when its
    last request returns."""
    first = targets[0]
    result = PhaseResult(first.name, first.model, "closed", concurrency, seconds)
    requests = [t.request_bytes() for t in targets]
    now = time.perf_counter()
    counter = _Counter(result, now + warmup, now + warmup + seconds, None)

    async def client(offset: int) -> None:
        conn: Connection | None = None
        i = offset
        while (begin := time.perf_counter()) < counter.t1:
            resp, conn = await _one(conn, first, requests[i % len(requests)])
            counter.record(begin, time.perf_counter(), resp)
            i += concurrency
        if conn is not None:
            conn.close()

    tasks = [asyncio.create_task(client(k)) for k in range(concurrency)]
    await asyncio.sleep(warmup)
    counter.open_span()
    await asyncio.gather(*tasks)
    return result


def _hits(srv: ServerProc, model: str) -> int:
    text = httpx.get(srv.url + "/metrics", timeout=10).text
    sample = f'resnet_cache_hits_total{{model="{model}"}} '
    return int(next((float(x.split()[-1]) for x in text.splitlines() if x.startswith(sample)), 0))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.cache", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=Path("models"))
    p.add_argument("--model", default="resnet18")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per phase")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--rounds", type=int, default=ROUNDS)
    args = p.parse_args(argv)
    log_dir = Path("bench/out")
    log_dir.mkdir(parents=True, exist_ok=True)
    servers: dict[str, ServerProc] = {}
    try:
        for label, size in (("off", 0), ("on", CACHE_BYTES)):
            port = free_port()
            env = {
                "RESNET_MODEL_DIR": str(args.model_dir.resolve()),
                "RESNET_MODELS": args.model,
                "RESNET_DEFAULT_MODEL": args.model,
                "RESNET_PORT": str(port),
                "RESNET_PROVIDER": "cpu",
                "RESNET_UI": "false",
                "RESNET_RESPONSE_CACHE_BYTES": str(size),
                "RESNET_RESPONSE_CACHE_MODELS": args.model if size else "",
            }
            servers[label] = start(f"cache-{label}", ["-m", "server"], env, port, log_dir)
        for srv in servers.values():
            srv.wait_ready("/readyz")
        repeated = repeated_images()
        print(
            f"repeated: {len(repeated)} images, mean "
            f"{statistics.fmean(map(len, repeated)) / 1e3:.1f} KB"
        )
        rows: dict[tuple[str, str], list[tuple[float, float, float, int]]] = {}
        for rnd in range(args.rounds):
            for work in ("repeated", "unique"):
                # Alternate which server goes first: drift hits both alike.
                order = list(servers.items())[:: 1 if rnd % 2 == 0 else -1]
                for label, srv in order:
                    # Unique bodies per phase: a later phase never hits an earlier one's.
                    images = (
                        repeated
                        if work == "repeated"
                        else unique_images(5000, f"round {rnd} {label}")
                    )
                    # Both servers paused but the measured one: the cores are its alone.
                    for other in servers.values():
                        if other is not srv:
                            other.pause()
                    try:
                        path = f"/predict/{args.model}"
                        targets = [
                            Target(f"cache {label}", args.model, srv.port, path, b, "image/jpeg")
                            for b in images
                        ]
                        hits = _hits(srv, args.model)
                        phase = asyncio.run(
                            rotating_loop(targets, args.concurrency, args.seconds, WARMUP_S)
                        )
                        hits = _hits(srv, args.model) - hits
                    finally:
                        for other in servers.values():
                            if other is not srv:
                                other.resume()
                    answered = phase.ok + phase.errors + phase.rejected
                    row = (phase.throughput, phase.pct(50), phase.pct(99), hits)
                    rows.setdefault((work, label), []).append(row)
                    print(
                        f"round {rnd + 1} {work:8s} cache {label:3s} {phase.throughput:7.1f}/s "
                        f"p50 {phase.pct(50) * 1e3:6.1f} ms p99 {phase.pct(99) * 1e3:6.1f} ms "
                        f"errors {phase.errors + phase.rejected} of {answered}, hits {hits} "
                        "(warm-up included)",
                        flush=True,
                    )
    finally:
        for srv in servers.values():
            srv.stop()
    med = statistics.median
    print("\n| workload | cache | images/s (rounds) | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for (work, label), rs in rows.items():
        rates = " / ".join(f"{r[0]:.1f}" for r in rs)
        print(
            f"| {work} | {label} | {med(r[0] for r in rs):.1f} ({rates}) | "
            f"{med(r[1] for r in rs) * 1e3:.1f} | {med(r[2] for r in rs) * 1e3:.1f} |"
        )


if __name__ == "__main__":
    main()
