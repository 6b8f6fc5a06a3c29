"""CpuBudget: busy threads never exceed the cores; waiters are served in arrival order."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from server.flow.cpubudget import CpuBudget
from server.settings import Settings


def _start(fn: Callable[[], None]) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def _wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_never_more_cores_busy_than_the_budget() -> None:
    budget = CpuBudget(4)
    peak, lock = [0], threading.Lock()

    def work(n: int) -> None:
        for _ in range(200):
            with budget.hold(n):
                with lock:
                    peak[0] = max(peak[0], budget.busy)
                    assert budget.busy <= 4
                time.sleep(0)

    threads = [_start(lambda n=n: work(n)) for n in (1, 1, 1, 2, 3, 4)]
    for t in threads:
        t.join(10)
    assert peak[0] == 4 and budget.busy == 0


def test_a_run_waiting_for_every_core_is_not_starved_by_decodes() -> None:
    """FIFO: once a 2-core run waits, later 1-core holders queue behind it."""
    budget = CpuBudget(2)
    order: list[str] = []
    first = threading.Event()
    release_first = threading.Event()

    def decode(name: str, hold: threading.Event | None = None) -> None:
        with budget.hold(1):
            order.append(name)
            if hold is not None:
                first.set()
                hold.wait(5)

    def run() -> None:
        with budget.hold(2):
            order.append("run")

    a = _start(lambda: decode("decode-a", release_first))
    first.wait(5)
    r = _start(run)  # needs both cores: waits for decode-a
    _wait_until(lambda: len(budget._waiters) == 1)
    b = _start(lambda: decode("decode-b"))  # one core is free, but the run came first
    _wait_until(lambda: len(budget._waiters) == 2)
    assert order == ["decode-a"]
    release_first.set()
    for t in (a, r, b):
        t.join(5)
    assert order == ["decode-a", "run", "decode-b"]


def test_asking_for_more_than_the_budget_takes_all_of_it() -> None:
    budget = CpuBudget(2)
    with budget.hold(16):
        assert budget.busy == 2
    assert budget.busy == 0


def test_released_when_the_block_raises() -> None:
    budget = CpuBudget(1)
    with pytest.raises(RuntimeError), budget.hold(1):
        raise RuntimeError("boom")
    assert budget.busy == 0


def test_rejects_an_empty_budget() -> None:
    with pytest.raises(ValueError, match="cores must be >= 1"):
        CpuBudget(0)


@pytest.mark.parametrize(
    ("kw", "threads", "pool"),
    [
        ({"cores": 8}, 8, 8),
        ({"cores": 8, "instances": 2}, 4, 8),
        ({"cores": 8, "instances": 3}, 2, 8),
        ({"cores": 2, "intra_op_threads": 16}, 2, 2),
        ({"cores": 4, "intra_op_threads": 1, "preprocess_threads": 2}, 1, 2),
    ],
)
def test_threads_are_sized_from_the_budget(
    tmp_path: Path, kw: dict[str, int], threads: int, pool: int
) -> None:
    s = Settings(model_dir=tmp_path, **kw)  # type: ignore[arg-type]
    assert (s.threads, s.pool_threads) == (threads, pool)


def test_stalled_counts_from_the_last_release_only_while_work_holds_or_waits() -> None:
    budget = CpuBudget(2)
    assert budget.stalled_s() == 0.0  # idle: nothing is stalled, however long
    time.sleep(1.0)
    release, released = threading.Event(), threading.Event()

    def hold(n: int) -> None:
        with budget.hold(n):
            release.wait(5)
        released.set()

    first = threading.Thread(target=hold, args=(2,))
    first.start()
    time.sleep(0.15)
    # Counted from the start of the work on an idle budget, not from the idle time before.
    assert 0.1 <= budget.stalled_s() < 0.9
    waiter = threading.Thread(target=hold, args=(1,))
    waiter.start()
    time.sleep(0.1)
    assert budget.busy == 2 and budget.waiting == 1
    assert budget.stalled_s() >= 0.25  # a waiter does not count as progress
    release.set()
    first.join(5)
    waiter.join(5)
    assert released.is_set()
    assert budget.busy == 0 and budget.waiting == 0 and budget.stalled_s() == 0.0
