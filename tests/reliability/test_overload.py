"""Overload: bursts far beyond what the server can hold get fast, clean answers."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, start_server
from tests.imagegen import jpeg
from tests.reliability.helpers import assert_error, metric

QUEUE, BATCH, CONCURRENT = 4, 2, 16
QUEUE_TIMEOUT_S = 2.0
HOLDS = QUEUE + BATCH  # images the server holds at once: queued + running
DATA = jpeg(320, 240, seed=11)


@pytest.fixture(scope="module")
def srv(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = start_server(
        model_dir,
        tmp_path_factory.mktemp("overload"),
        models="resnet18",
        max_queue_size=QUEUE,
        max_batch_size=BATCH,
        warmup_batch_sizes="1,2",
        queue_timeout_ms=QUEUE_TIMEOUT_S * 1000,
        max_concurrent_requests=CONCURRENT,
    )
    yield s
    s.stop()


@dataclass
class Outcome:
    status: int
    seconds: float
    response: httpx.Response


async def burst(srv: ServerProcess, n: int) -> list[Outcome]:
    """``n`` concurrent requests, each on its own connection, each with a client timeout."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=srv.url, limits=limits, timeout=30) as c:

        async def one() -> Outcome:
            t0 = time.monotonic()
            r = await c.post("/predict", content=DATA, headers={"content-type": "image/jpeg"})
            return Outcome(r.status_code, time.monotonic() - t0, r)

        return list(await asyncio.gather(*(one() for _ in range(n))))


def fast_answers(srv: ServerProcess) -> float:
    """/predict requests the server answered within 50 ms, by its own histogram."""
    return metric(srv, "resnet_request_duration_seconds_bucket", endpoint="predict", le="0.05")


def check_burst(
    srv: ServerProcess, outcomes: list[Outcome], fast_before: float
) -> dict[str, float]:
    ok = sorted(o.seconds for o in outcomes if o.status == 200)
    rejected = [o for o in outcomes if o.status != 200]
    assert ok, "some requests must be served"
    assert rejected, "a burst this size must be shed"
    for o in rejected:
        assert o.status == 503, o.response.text
        assert_error(o.response, 503, o.response.json()["code"])
        assert o.response.json()["code"] in {"queue_full", "overloaded", "queue_timeout"}
    # Refused at the door, before their bodies were read or decoded: each cost the server
    # < 50 ms by its own clock. (queue_timeout ones were admitted and waited, by definition.)
    at_door = [o for o in rejected if o.response.json()["code"] != "queue_timeout"]
    assert fast_answers(srv) - fast_before >= len(at_door)
    # On the client's clock every answer also carries the cost of opening hundreds of
    # connections on the same two cores; the median refusal measures that overhead.
    overhead = sorted(o.seconds for o in rejected)[len(rejected) // 2]
    p99 = ok[min(len(ok) - 1, int(len(ok) * 0.99))]
    assert p99 < QUEUE_TIMEOUT_S + overhead, f"accepted p99 {p99:.2f}s, overhead {overhead:.2f}s"
    assert max(o.seconds for o in at_door) < overhead + 1
    timed_out = [o.seconds for o in rejected if o not in at_door]
    assert max(timed_out, default=0) < overhead + QUEUE_TIMEOUT_S + 1
    codes = Counter(o.response.json()["code"] for o in rejected)
    return {
        "ok": len(ok),
        **codes,
        "p99_ok_s": round(p99, 3),
        "overhead_s": round(overhead, 3),
        "max_rejected_s": round(max(o.seconds for o in rejected), 3),
    }


def test_burst_of_10x_capacity_is_answered_quickly_and_memory_does_not_grow(
    srv: ServerProcess,
) -> None:
    n = 10 * HOLDS
    asyncio.run(burst(srv, n))  # warm-up: connection handling, allocator arenas
    t0, fast = time.monotonic(), fast_answers(srv)
    small = check_burst(srv, asyncio.run(burst(srv, n)), fast)
    small_s = time.monotonic() - t0
    rss_n = srv.rss_bytes()
    t0, fast = time.monotonic(), fast_answers(srv)
    large = check_burst(srv, asyncio.run(burst(srv, 4 * n)), fast)
    large_s = time.monotonic() - t0
    rss_4n = srv.rss_bytes()
    print(
        f"\nburst {n}: {small} in {small_s:.2f}s; burst {4 * n}: {large} in {large_s:.2f}s; "
        f"RSS {rss_n / 2**20:.1f} -> {rss_4n / 2**20:.1f} MiB"
    )
    assert rss_4n - rss_n < 30 * 2**20, "memory must not grow with the size of the burst"
    assert metric(srv, "resnet_rejected_requests_total", model="resnet18") > 0

    # Normal service resumes at once.
    assert metric(srv, "resnet_queue_depth", model="resnet18") == 0
    t0 = time.monotonic()
    r = srv.client().post("/predict", content=DATA, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200 and time.monotonic() - t0 < 1.0
    assert metric(srv, "resnet_requests_total", outcome="internal_error") == 0
    assert metric(srv, "resnet_requests_total", outcome="inference_failed") == 0
    assert srv.client().get("/readyz").status_code == 200
