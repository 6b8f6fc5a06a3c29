"""Collections for /metrics and the v2 statistics (server.scrape): off the event loop, one at
a time, reused for max_age_s. A fake Metrics counts the collections; no server."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from prometheus_client import CollectorRegistry, Counter

from server.metrics import Metrics
from server.scrape import Scrapes


class CountingMetrics(Metrics):
    """Real metrics whose collect() records its calls and threads, and takes ``slow_s``."""

    def __init__(self, slow_s: float = 0.0) -> None:
        super().__init__(CollectorRegistry(), 4)
        self.slow_s = slow_s
        self.calls: list[str] = []

    def collect(self):  # type: ignore[no-untyped-def]
        self.calls.append(threading.current_thread().name)
        time.sleep(self.slow_s)
        return super().collect()


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_a_storm_within_max_age_costs_one_collection_off_the_loop() -> None:
    metrics = CountingMetrics(slow_s=0.05)
    scrapes = Scrapes(metrics, max_age_s=1.0)

    async def storm() -> list[bytes]:
        first = [s.text for s in await asyncio.gather(*(scrapes.snapshot() for _ in range(100)))]
        metrics.requests.labels("m", "predict", "ok").inc()
        later = [(await scrapes.snapshot()).text for _ in range(20)]  # within max_age: reused
        return first + later

    texts = run(storm())
    scrapes.close()
    assert metrics.calls == ["metrics_0"]  # one collection, in the scrape thread
    assert len(set(texts)) == 1
    assert b'resnet_requests_total{endpoint="predict",model="m",outcome="ok"}' not in texts[0]


def test_an_expired_collection_is_made_again_with_the_new_values() -> None:
    metrics = CountingMetrics()
    scrapes = Scrapes(metrics, max_age_s=0.2)

    async def twice() -> tuple[bytes, bytes]:
        before = (await scrapes.snapshot()).text
        metrics.requests.labels("m", "predict", "ok").inc(3)
        await asyncio.sleep(0.25)
        return before, (await scrapes.snapshot()).text

    before, after = run(twice())
    scrapes.close()
    assert len(metrics.calls) == 2
    line = b'resnet_requests_total{endpoint="predict",model="m",outcome="ok"} 3.0'
    assert line not in before and line in after


def test_without_max_age_each_scrape_collects_and_concurrent_ones_share() -> None:
    metrics = CountingMetrics(slow_s=0.05)
    scrapes = Scrapes(metrics, max_age_s=0.0)

    async def scrapes_() -> None:
        await asyncio.gather(*(scrapes.snapshot() for _ in range(10)))  # one, shared
        for i in range(3):
            metrics.requests.labels("m", "predict", "ok").inc()
            text = (await scrapes.snapshot()).text  # sequential: fresh every time
            assert f'outcome="ok"}} {i + 1}.0'.encode() in text

    run(scrapes_())
    scrapes.close()
    assert len(metrics.calls) == 4


def test_the_event_loop_runs_while_a_collection_does() -> None:
    metrics = CountingMetrics(slow_s=0.3)
    scrapes = Scrapes(metrics, max_age_s=1.0)

    async def meanwhile() -> int:
        task = asyncio.ensure_future(scrapes.snapshot())
        ticks = 0
        while not task.done():
            await asyncio.sleep(0.01)
            ticks += 1
        await task
        return ticks

    ticks = run(meanwhile())
    scrapes.close()
    assert ticks >= 10  # ~30 expected: the loop was never held for the 0.3 s


def test_a_failed_collection_reaches_its_scrapes_and_the_next_one_retries() -> None:
    metrics = CountingMetrics()
    scrapes = Scrapes(metrics, max_age_s=1.0)
    broken = Counter("broken", "raises when collected", registry=metrics.registry)
    broken._samples = lambda: 1 / 0  # type: ignore[method-assign]

    async def twice() -> bytes:
        with pytest.raises(ZeroDivisionError):
            await asyncio.gather(scrapes.snapshot(), scrapes.snapshot())
        metrics.registry.unregister(broken)
        return (await scrapes.snapshot()).text

    assert b"resnet_requests_total" in run(twice())
    scrapes.close()
    assert len(metrics.calls) == 2
