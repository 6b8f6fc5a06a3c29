"""An asyncio HTTP/1.1 load generator: closed loop (N clients back to back) and open loop
(Poisson arrivals at a fixed rate, latency measured from the scheduled send time, so a slow
server cannot slow the arrivals down: no coordinated omission).

A minimal client on ``asyncio`` streams with keep-alive connections instead of httpx: it
shares the two cores with the server, so it must cost as little CPU per request as possible.
Its own CPU use is measured (process CPU time / wall time) and reported with every phase.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

#: Longest a single request may take before it counts as an error, seconds.
REQUEST_TIMEOUT_S = 60.0

#: Called with "start" when the measured window opens and "end" when the last request of the
#: phase has returned: the span over which server-side counters are read.
WindowHook = Callable[[str], object]


@dataclass(frozen=True)
class Target:
    """One endpoint: ``POST path`` on 127.0.0.1:``port`` with a fixed body. ``name`` is the
    kind of server (ours, a peer, a configuration of ours), ``model`` the served model name,
    ``variant`` the variant key (``resnet18-int8@openvino``)."""

    name: str
    model: str
    port: int
    path: str
    body: bytes
    content_type: str
    variant: str = ""

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
    variant: str = ""
    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    rejected: int = 0  # 503
    errors: int = 0  # any other status, a timeout or a transport error
    client_cpu: float = 0.0
    refusal_latencies: list[float] = field(default_factory=list)
    """seconds from send to the 503, per refused request"""
    refusal_codes: dict[str, int] = field(default_factory=dict)
    """503s by the error ``code`` of their body"""
    refusals_without_retry_after: int = 0
    span_responses: int = 0
    """responses that arrived between the window hook's "start" and "end" (any status)"""
    extra: dict[str, float] = field(default_factory=dict)
    others_cores: float = 0.0
    """CPU of every process but the one under test and the load generator over the phase
    (cores; :mod:`bench.machine`), the other servers paused"""
    others_top: dict[str, float] = field(default_factory=dict)
    """each of those that used at least 0.005 cores, ``name[pid]`` -> cores (largest first),
    and ``unattributed`` (see bench.machine)"""
    paused: int = 0
    """other servers (process groups) paused for the phase"""
    marked: bool = False
    """``others_cores`` above bench.machine.OTHERS_LIMIT_CORES: the phase shared the cores"""

    @property
    def throughput(self) -> float:
        """Successful responses per second of measured time."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def pct(self, q: float) -> float:
        """Latency percentile ``q`` (0..100) of successful requests, seconds (NaN if none)."""
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


@dataclass(frozen=True)
class Response:
    """What the load generator keeps of a response: the status, whether the connection stays
    open, whether a ``Retry-After`` header came, and the ``code`` of a 503's JSON body."""

    status: int
    keep_alive: bool
    retry_after: bool = False
    code: str = ""


def _error_code(body: bytes) -> str:
    try:
        return str(json.loads(body).get("code", "?"))
    except (ValueError, AttributeError):
        return "?"


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, request: bytes) -> Response:
        """Send ``request`` and read the whole response."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip().lower()
        body = b""
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                body += (await self.reader.readexactly(size + 2))[:size]
                if size == 0:
                    break
        code = _error_code(body) if status == 503 else ""
        keep = headers.get("connection") != "close"
        return Response(status, keep, "retry-after" in headers, code)

    def close(self) -> None:
        self.writer.close()


class _Counter:
    def __init__(self, result: PhaseResult, t0: float, t1: float, hook: WindowHook | None) -> None:
        self.r, self.t0, self.t1 = result, t0, t1
        self.hook = hook
        self.span_start = float("inf")

    def open_span(self) -> None:
        self.span_start = time.perf_counter()
        if self.hook is not None:
            self.hook("start")

    def close_span(self) -> None:
        if self.hook is not None:
            self.hook("end")

    def record(self, start: float, end: float, resp: Response | None) -> None:
        """Count a request started inside the measured window [t0, t1)."""
        if resp is not None and end >= self.span_start:
            self.r.span_responses += 1
        if not self.t0 <= start < self.t1:
            return
        if resp is not None and resp.status == 200:
            self.r.ok += 1
            self.r.latencies.append(end - start)
        elif resp is not None and resp.status == 503:
            self.r.rejected += 1
            self.r.refusal_latencies.append(end - start)
            self.r.refusal_codes[resp.code] = self.r.refusal_codes.get(resp.code, 0) + 1
            self.r.refusals_without_retry_after += not resp.retry_after
        else:
            self.r.errors += 1


async def _one(
    conn: Connection | None, target: Target, req: bytes
) -> tuple[Response | None, Connection | None]:
    """One request on ``conn`` (opened if None); returns (response or None, reusable conn)."""
    try:
        if conn is None:
            conn = await Connection.open(target.port)
        resp = await asyncio.wait_for(conn.send(req), REQUEST_TIMEOUT_S)
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
    if not resp.keep_alive:
        conn.close()
        return resp, None
    return resp, conn


async def closed_loop(
    target: Target,
    concurrency: int,
    seconds: float,
    warmup: float,
    hook: WindowHook | None = None,
) -> PhaseResult:
    """``concurrency`` clients, each sending the next request when the last one returns."""
    result = PhaseResult(target.name, target.model, "closed", concurrency, seconds, target.variant)
    req = target.request_bytes()
    now = time.perf_counter()
    counter = _Counter(result, now + warmup, now + warmup + seconds, hook)

    async def client() -> None:
        conn: Connection | None = None
        while (start := time.perf_counter()) < counter.t1:
            resp, conn = await _one(conn, target, req)
            counter.record(start, time.perf_counter(), resp)
        if conn is not None:
            conn.close()

    tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    counter.open_span()
    cpu_start = time.process_time()
    wall_start = time.perf_counter()
    await asyncio.gather(*tasks)
    counter.close_span()
    result.client_cpu = (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)
    return result


async def open_loop(
    target: Target,
    rate: float,
    seconds: float,
    warmup: float,
    max_in_flight: int = 512,
    seed: int = 0,
    hook: WindowHook | None = None,
) -> PhaseResult:
    """Poisson arrivals at ``rate`` requests/s. Latency counts from the scheduled send time.

    Arrivals beyond ``max_in_flight`` outstanding requests are counted as errors (the client
    refuses to open more connections), so a collapsed server cannot exhaust the client.
    """
    result = PhaseResult(target.name, target.model, "open", rate, seconds, target.variant)
    req = target.request_bytes()
    rng = np.random.default_rng(seed)
    total = warmup + seconds
    gaps = rng.exponential(1.0 / rate, size=int(total * rate * 1.5) + 16)
    offsets = np.cumsum(gaps)
    offsets = offsets[offsets < total]
    idle: list[Connection] = []
    in_flight = 0
    base = time.perf_counter() + 0.05
    counter = _Counter(result, base + warmup, base + total, hook)

    async def fire(at: float) -> None:
        nonlocal in_flight
        if in_flight >= max_in_flight:
            counter.record(at, at, None)
            return
        in_flight += 1
        try:
            resp, conn = await _one(idle.pop() if idle else None, target, req)
        finally:
            in_flight -= 1
        counter.record(at, time.perf_counter(), resp)
        if conn is not None:
            idle.append(conn)

    tasks: list[asyncio.Task[None]] = []
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    for off in offsets:
        at = base + float(off)
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if at >= counter.t0 and counter.span_start == float("inf"):
            counter.open_span()
        tasks.append(asyncio.create_task(fire(at)))
    await asyncio.gather(*tasks)
    if counter.span_start == float("inf"):
        counter.open_span()
    counter.close_span()
    result.client_cpu = (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)
    for conn in idle:
        conn.close()
    return result
