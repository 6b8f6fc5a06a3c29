"""The cores the process may use, shared by engine runs and image decodes.

An engine run with ``threads`` intra-op threads holds that many cores; a decode holds one.
Whatever the number of models, instances and preprocessing threads, the threads doing work
at any moment never outnumber the cores: a run does not start while decodes hold the cores
it needs, and the other way round. Without this, two runs of different models (or a run and
two decodes) share cores, and every parallel operator of the run waits at its barrier for
the thread that lost its core. Waiters are served first come, first served, so a run
waiting for all the cores is not starved by a stream of one-core decodes. Blocking; called
from worker threads only (never the event loop).

Every decode and every engine run passes through here, so the budget also tells whether
that work is moving (:meth:`CpuBudget.stalled_s`, read by readiness): work holds or waits for
cores, and no hold has ended for so long.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class CpuBudget:
    """``cores`` tokens; :meth:`hold` takes ``n`` of them for the duration of a block."""

    def __init__(self, cores: int) -> None:
        if cores < 1:
            raise ValueError(f"cores must be >= 1, got {cores}")
        self.cores = cores
        self._free = cores
        self._lock = threading.Lock()
        self._waiters: deque[tuple[int, threading.Event]] = deque()
        self._moved = time.monotonic()  # the last release, or the start of work on an idle budget

    @property
    def busy(self) -> int:
        """Cores held right now."""
        return self.cores - self._free

    @property
    def waiting(self) -> int:
        """Holds waiting for cores right now."""
        return len(self._waiters)

    def stalled_s(self) -> float:
        """Seconds that work holding or waiting for cores has gone without any hold ending
        (monotonic); 0.0 while no core is held or waited for."""
        with self._lock:
            if self._free == self.cores and not self._waiters:
                return 0.0
            return time.monotonic() - self._moved

    @contextmanager
    def hold(self, n: int) -> Iterator[None]:
        """Hold ``min(n, cores)`` cores while the block runs (waits until they are free)."""
        n = max(1, min(n, self.cores))
        self._acquire(n)
        try:
            yield
        finally:
            self._release(n)

    def _acquire(self, n: int) -> None:
        with self._lock:
            if self._free == self.cores and not self._waiters:
                self._moved = time.monotonic()  # idle until now: nothing was stalled
            if not self._waiters and self._free >= n:
                self._free -= n
                return
            event = threading.Event()
            self._waiters.append((n, event))
        event.wait()  # _release took the cores for us before setting it

    def _release(self, n: int) -> None:
        with self._lock:
            self._moved = time.monotonic()
            self._free += n
            while self._waiters and self._waiters[0][0] <= self._free:
                need, event = self._waiters.popleft()
                self._free -= need
                event.set()
