"""What one ``/metrics`` scrape costs a server with several workers (docs/RELIABILITY.md).

Run: ``python -m tests.monitoring.scrape_cost MODEL_DIR [WORKERS...]`` (default 2 4). For
each worker count: a fresh server on resnet18, 64 requests so every worker's files hold
series, then (a) one collection (every worker's files read and rendered, as a scrape does),
timed here on the server's own metrics directory: the median of 50; (b) a storm of 400
scrapes from 8 threads on keep-alive connections: the CPU the workers spent on it (their
``/proc`` utime + stime), per scrape; (c) ``/healthz`` latency (every 20 ms) during a paced
storm of 200 scrapes a second for 4 s: what the storm does to the event loops, at the same
load before and after a change.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from tests.conftest import ServerProcess, start_server
from tests.imagegen import jpeg
from tests.integration.test_workers import metrics_dir, workers_of
from tests.reliability.helpers import wait_for


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / 100


_local = threading.local()


def scrape(url: str) -> None:
    if not hasattr(_local, "client"):
        _local.client = httpx.Client(base_url=url, timeout=60)
    r = _local.client.get("/metrics")
    assert r.status_code == 200 and "resnet_requests_total" in r.text


def storm(srv: ServerProcess, n: int = 400, threads: int = 8) -> float:
    with ThreadPoolExecutor(threads) as ex:
        t0 = time.perf_counter()
        list(ex.map(lambda _: scrape(srv.url), range(n)))
        return time.perf_counter() - t0


def paced(srv: ServerProcess, per_s: float = 25, seconds: float = 4, threads: int = 8) -> None:
    """``threads`` x ``per_s`` scrapes a second for ``seconds``: the same load before and
    after a change, whatever a scrape costs (as long as the server keeps up)."""

    def one_thread(_: int) -> None:
        start = time.perf_counter()
        for i in range(int(per_s * seconds)):
            time.sleep(max(0.0, start + i / per_s - time.perf_counter()))
            scrape(srv.url)

    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(one_thread, range(threads)))


def collection_s(directory: Path) -> float:
    """One collection of every worker's files, as ``Metrics.collect`` + rendering does it."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        generate_latest(registry)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(model_dir: Path, workers: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        srv = start_server(
            model_dir,
            Path(tmp),
            workers=workers,
            cores=2,
            models="resnet18",
            warmup_batch_sizes="1,4",
        )
        try:
            assert wait_for(lambda: srv.log.count("ready: serving") == workers, 300)
            data = jpeg(320, 240, seed=1)
            for _ in range(64):
                httpx.post(
                    f"{srv.url}/predict",
                    content=data,
                    timeout=60,
                    headers={"content-type": "image/jpeg"},
                )
            pids = list(workers_of(srv).values())
            one = collection_s(metrics_dir(srv))
            cpu0 = cpu_seconds(pids)
            wall = storm(srv)
            cpu = cpu_seconds(pids) - cpu0
            with ThreadPoolExecutor(1) as ex:
                background = ex.submit(paced, srv)
                probes = []
                while not background.done():
                    t0 = time.perf_counter()
                    httpx.get(f"{srv.url}/healthz", timeout=60)
                    probes.append(time.perf_counter() - t0)
                    time.sleep(0.02)
            return (
                f"workers={workers}: one collection {one * 1000:.1f} ms (median of 50); storm of "
                f"400: {wall:.2f} s wall, {cpu / 400 * 1000:.2f} ms worker CPU per scrape, "
                f"/healthz during 200 scrapes/s {statistics.median(probes) * 1000:.1f} ms median "
                f"({len(probes)} probes), max {max(probes) * 1000:.0f} ms"
            )
        finally:
            srv.stop()


def main() -> None:
    model_dir = Path(sys.argv[1])
    for workers in [int(w) for w in sys.argv[2:]] or [2, 4]:
        print(measure(model_dir, workers), flush=True)


if __name__ == "__main__":
    main()
