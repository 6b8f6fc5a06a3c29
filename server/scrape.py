"""What ``/metrics`` and the v2 statistics read: collections made off the event loop, bounded.

A collection (:meth:`server.metrics.Metrics.collect`) reads every worker's files with
several workers (``workers`` > 1: one file per worker and metric type, parsed in Python),
so it runs in a thread of its own, never on the event loop, and only one runs at a time:
scrapes that arrive while one is running share its result. With several workers a result
is reused for ``max_age_s`` (``SCRAPE_MAX_AGE_S``), so a storm of scrapes costs one
collection per second per worker whatever its size; a scrape then reads values up to that
old, which Prometheus (scraping every 15 s or so) never notices. In a single process a
collection is an in-memory walk and every scrape gets a fresh one.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from server.metrics import Metrics
from server.threadname import name_os_thread

#: Seconds a collection is reused with several workers.
SCRAPE_MAX_AGE_S = 1.0


class _Collected(CollectorRegistry):
    """Already-collected families, for ``generate_latest``."""

    def __init__(self, families: list[Metric]) -> None:
        super().__init__(auto_describe=False)
        self._families = families

    def collect(self):  # type: ignore[no-untyped-def]  # the base's is untyped too
        yield from self._families


@dataclass
class Snapshot:
    """One collection: its families, its Prometheus text, and when it started (monotonic s)."""

    families: list[Metric]
    text: bytes
    at: float = field(default=0.0)


class Scrapes:
    """Collections of ``metrics`` for the endpoints that read them (module docstring)."""

    def __init__(self, metrics: Metrics, max_age_s: float) -> None:
        self._metrics = metrics
        self.max_age_s = max_age_s
        self._thread: ThreadPoolExecutor | None = None  # made at the first scrape
        self._last: Snapshot | None = None
        self._running: asyncio.Future[Snapshot] | None = None
        self.collections = 0  # made so far (tests read it)

    async def snapshot(self) -> Snapshot:
        """A collection no older than ``max_age_s`` (one running now, with ``max_age_s`` 0).

        Raises whatever the collection raised (a 500 for the endpoint), once per collection.
        """
        now = time.monotonic()
        if self._last is not None and now - self._last.at < self.max_age_s:
            return self._last
        if self._running is None:
            if self._thread is None:
                self._thread = ThreadPoolExecutor(
                    1, thread_name_prefix="metrics", initializer=name_os_thread
                )
            loop = asyncio.get_running_loop()
            self._running = loop.run_in_executor(self._thread, self._collect, now)
            self._running.add_done_callback(self._finished)
        # Shielded: a scrape whose client leaves must not cancel the others' collection.
        return await asyncio.shield(self._running)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=False, cancel_futures=True)
            self._thread = None

    def _collect(self, at: float) -> Snapshot:
        families = self._metrics.collect()
        return Snapshot(families, generate_latest(_Collected(families)), at)

    def _finished(self, running: asyncio.Future[Snapshot]) -> None:
        self._running = None
        self.collections += 1
        if not running.cancelled() and running.exception() is None:
            self._last = running.result()
