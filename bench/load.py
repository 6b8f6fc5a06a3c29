"""An asyncio HTTP/1.1 load generator: closed loop (N clients back to back) and open loop
(Poisson arrivals at a fixed rate, latency measured from the scheduled send time, so a slow
server cannot slow the arrivals down: no coordinated omission).

A minimal client on ``asyncio`` streams with keep-alive connections instead of httpx: it
shares the two cores with the server, so it must cost as little CPU per request as possible.
Its own CPU use is measured (process CPU time / wall time) and reported with every phase.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

#: Longest a single request may take before it counts as an error, seconds.
REQUEST_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Target:
    """One endpoint: ``POST path`` on 127.0.0.1:``port`` with a fixed body."""

    name: str
    model: str
    port: int
    path: str
    body: bytes
    content_type: str

    def request_bytes(self) -> bytes:
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Type: {self.content_type}\r\nContent-Length: {len(self.body)}\r\n"
            "Accept: application/json\r\n\r\n"
        )
        return head.encode() + self.body


@dataclass
class PhaseResult:
    """One load phase. Latencies are seconds; rates are per second; ``client_cpu`` is cores."""

    target: str
    model: str
    kind: str  # "closed" or "open"
    level: float  # concurrency (closed) or offered requests/s (open)
    seconds: float
    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    rejected: int = 0  # 503
    errors: int = 0  # any other status, a timeout or a transport error
    client_cpu: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        """Successful responses per second of measured time."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def pct(self, q: float) -> float:
        """Latency percentile ``q`` (0..100) of successful requests, seconds (NaN if none)."""
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, request: bytes) -> tuple[int, bool]:
        """Send ``request``, read the whole response; returns (status, keep-alive)."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip().lower()
        if "content-length" in headers:
            await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        return status, headers.get("connection") != "close"

    def close(self) -> None:
        self.writer.close()


class _Counter:
    def __init__(self, result: PhaseResult, t0: float, t1: float) -> None:
        self.r, self.t0, self.t1 = result, t0, t1

    def record(self, start: float, end: float, status: int | None) -> None:
        """Count a request started inside the measured window [t0, t1)."""
        if not self.t0 <= start < self.t1:
            return
        if status == 200:
            self.r.ok += 1
            self.r.latencies.append(end - start)
        elif status == 503:
            self.r.rejected += 1
        else:
            self.r.errors += 1


async def _one(
    conn: Connection | None, target: Target, req: bytes
) -> tuple[int | None, Connection | None]:
    """One request on ``conn`` (opened if None); returns (status or None, reusable conn)."""
    try:
        if conn is None:
            conn = await Connection.open(target.port)
        status, keep = await asyncio.wait_for(conn.send(req), REQUEST_TIMEOUT_S)
    except (
        OSError,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
        TimeoutError,
        ValueError,
    ):
        if conn is not None:
            conn.close()
        return None, None
    if not keep:
        conn.close()
        return status, None
    return status, conn


async def closed_loop(
    target: Target, concurrency: int, seconds: float, warmup: float
) -> PhaseResult:
    """``concurrency`` clients, each sending the next request when the last one returns."""
    result = PhaseResult(target.name, target.model, "closed", concurrency, seconds)
    req = target.request_bytes()
    now = time.perf_counter()
    counter = _Counter(result, now + warmup, now + warmup + seconds)

    async def client() -> None:
        conn: Connection | None = None
        while (start := time.perf_counter()) < counter.t1:
            status, conn = await _one(conn, target, req)
            counter.record(start, time.perf_counter(), status)
        if conn is not None:
            conn.close()

    tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    cpu_start = time.process_time()
    wall_start = time.perf_counter()
    await asyncio.gather(*tasks)
    result.client_cpu = (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)
    return result


async def open_loop(
    target: Target,
    rate: float,
    seconds: float,
    warmup: float,
    max_in_flight: int = 512,
    seed: int = 0,
) -> PhaseResult:
    """Poisson arrivals at ``rate`` requests/s. Latency counts from the scheduled send time.

    Arrivals beyond ``max_in_flight`` outstanding requests are counted as errors (the client
    refuses to open more connections), so a collapsed server cannot exhaust the client.
    """
    result = PhaseResult(target.name, target.model, "open", rate, seconds)
    req = target.request_bytes()
    rng = np.random.default_rng(seed)
    total = warmup + seconds
    gaps = rng.exponential(1.0 / rate, size=int(total * rate * 1.5) + 16)
    offsets = np.cumsum(gaps)
    offsets = offsets[offsets < total]
    idle: list[Connection] = []
    in_flight = 0
    base = time.perf_counter() + 0.05
    counter = _Counter(result, base + warmup, base + total)

    async def fire(at: float) -> None:
        nonlocal in_flight
        if in_flight >= max_in_flight:
            counter.record(at, at, None)
            return
        in_flight += 1
        try:
            status, conn = await _one(idle.pop() if idle else None, target, req)
        finally:
            in_flight -= 1
        counter.record(at, time.perf_counter(), status)
        if conn is not None:
            idle.append(conn)

    tasks: list[asyncio.Task[None]] = []
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    for off in offsets:
        at = base + float(off)
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(at)))
    await asyncio.gather(*tasks)
    result.client_cpu = (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)
    for conn in idle:
        conn.close()
    return result
