"""Per-thread CPU time of a server process, grouped by what the threads do.

Read from ``/proc/PID/task/TID/schedstat`` (CPU time and run-queue wait, nanoseconds) with
``/proc/PID/task/TID/stat`` (utime + stime, clock ticks) as the fallback, and the thread's
name from ``/proc/PID/task/TID/comm``. The groups: the event loop (the main thread, where
uvicorn runs the asyncio loop), decode (``preprocess_*``), runners (``<model>-run<i>_*``, the
thread that calls the engine), the thread pools of FastAPI/AnyIO and asyncio, and the engine
runtime's own threads (ONNX Runtime's intra-op pool, OpenVINO's TBB workers: native threads
that Python did not start).

Python 3.11-3.13 do not give threads an OS name, so a server started through
``python -m bench.serve`` (and the naive peer) call :func:`name_threads`: every thread
started from ``threading`` sets its OS name from its Python name, and appends ``TID NAME``
to the file named by ``BENCH_THREAD_LOG``, which tells Python threads from native ones.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from server.threadname import name_os_thread

LOOP = "event loop"
DECODE = "decode"
RUNNER = "runner"
POOL = "framework threads"
RUNTIME = "engine runtime"
OTHER = "other"
GROUPS = (LOOP, DECODE, RUNNER, RUNTIME, POOL, OTHER)
"""Report order"""

THREAD_LOG_ENV = "BENCH_THREAD_LOG"
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ThreadTimes:
    """One thread: OS name, CPU seconds and run-queue wait seconds (runnable, no core)."""

    tid: int
    name: str
    cpu_s: float
    wait_s: float


def sample(pid: int) -> dict[int, ThreadTimes]:
    """Every live thread of ``pid`` now (empty if the process is gone)."""
    out: dict[int, ThreadTimes] = {}
    try:
        tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return out
    for tid in tids:
        base = Path(f"/proc/{pid}/task/{tid}")
        try:
            name = (base / "comm").read_text().strip()
            try:
                run_ns, wait_ns = (int(x) for x in (base / "schedstat").read_text().split()[:2])
                cpu, wait = run_ns / 1e9, wait_ns / 1e9
            except (OSError, ValueError):
                stat = (base / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                cpu, wait = (int(fields[11]) + int(fields[12])) / _TICK, float("nan")
        except OSError:  # the thread ended meanwhile
            continue
        out[tid] = ThreadTimes(tid, name, cpu, wait)
    return out


def python_threads(log: Path | None) -> dict[int, str]:
    """TID -> Python thread name, from a ``BENCH_THREAD_LOG`` file (empty if none)."""
    if log is None or not log.exists():
        return {}
    out = {}
    for line in log.read_text().splitlines():
        tid, _, name = line.partition(" ")
        if tid.isdigit():
            out[int(tid)] = name
    return out


def group_of(pid: int, tid: int, name: str, models: list[str], py: dict[int, str]) -> str:
    """The group of thread ``tid`` (OS name ``name``) of process ``pid``.

    ``models``: served model names (runner threads are ``<model>-run<i>_<n>``, cut to 15
    characters by the kernel); ``py``: the Python threads, TID -> full name (see
    :func:`python_threads`), which tells the engine's native threads (that inherit the OS
    name of the thread that created them) from Python's.
    """
    if tid == pid:
        return LOOP
    full = py.get(tid)
    if py and full is None:  # not started by Python: the runtime's pools (or libuv's)
        return OTHER if name.startswith("libuv") else RUNTIME
    name = full or name
    if name.startswith("preprocess"):
        return DECODE
    if any(name.startswith(f"{m}-run") or f"{m}-run".startswith(name) for m in models):
        return RUNNER
    if name.startswith(("AnyIO", "asyncio", "ThreadPoolExecutor")):
        return POOL
    return OTHER


@dataclass(frozen=True)
class Usage:
    """CPU seconds per group over a span of ``wall_s`` seconds, and run-queue waits (seconds
    runnable but without a core): the event loop's, and all threads' together."""

    wall_s: float
    cpu_s: dict[str, float]
    loop_wait_s: float
    wait_s: float

    @property
    def total_s(self) -> float:
        return sum(self.cpu_s.values())

    def share(self, group: str) -> float:
        """Fraction of the process's CPU time spent in ``group`` (0..1)."""
        return self.cpu_s.get(group, 0.0) / self.total_s if self.total_s else float("nan")

    @property
    def loop_utilisation(self) -> float:
        """The event loop thread's CPU seconds per wall second (1.0 = a core, saturated)."""
        return self.cpu_s.get(LOOP, 0.0) / self.wall_s if self.wall_s else float("nan")


def usage(
    pid: int,
    before: dict[int, ThreadTimes],
    after: dict[int, ThreadTimes],
    wall_s: float,
    models: list[str],
    py: dict[int, str],
) -> Usage:
    """Group the CPU time each thread used between two :func:`sample` calls (threads born in
    between count from zero; threads that ended in between are lost, a small undercount)."""
    cpu: dict[str, float] = {}
    loop_wait = wait = 0.0
    for tid, t in after.items():
        b = before.get(tid)
        d_cpu = t.cpu_s - (b.cpu_s if b else 0.0)
        d_wait = t.wait_s - (b.wait_s if b else 0.0)
        group = group_of(pid, tid, t.name, models, py)
        cpu[group] = cpu.get(group, 0.0) + max(0.0, d_cpu)
        wait += d_wait
        if group == LOOP:
            loop_wait = d_wait
    return Usage(wall_s, cpu, loop_wait, wait)


# -- in the measured process ---------------------------------------------------------------


def name_threads() -> None:
    """From now on, every thread started from ``threading`` sets its OS name (``comm``) from
    its Python name and, if ``BENCH_THREAD_LOG`` names a file, appends ``TID NAME`` to it.

    Uses ``threading.setprofile``: the hook runs once, at the first call in each new thread,
    and removes itself, so the thread runs unprofiled afterwards.
    """
    log = os.environ.get(THREAD_LOG_ENV)
    lock = threading.Lock()

    def record(thread: threading.Thread) -> None:
        name_os_thread()  # record() runs in ``thread`` itself
        if log:
            with lock, open(log, "a") as f:
                f.write(f"{threading.get_native_id()} {thread.name}\n")

    def hook(frame: FrameType, event: str, arg: object) -> None:
        sys.setprofile(None)
        record(threading.current_thread())

    if log:  # the main thread keeps its OS name (the process's name in ps and top)
        with open(log, "a") as f:
            f.write(f"{threading.main_thread().native_id} {threading.main_thread().name}\n")
    threading.setprofile(hook)
