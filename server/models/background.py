"""Loading a version while another serves, at a lower CPU priority (Linux ``nice``).

A swap's load (session creation, agreement check, warm-up at every size) costs about 1.5
core-seconds for ResNet18; on a busy machine it competes with the traffic of the version
still serving. Run at ``LOAD_NICE``, the scheduler gives the serving threads the cores first
and the load the rest. The engine's own threads are created by the loading thread and inherit
its niceness, so before the new version takes traffic every thread of the process at
``LOAD_NICE`` is put back to 0. Lowering a niceness again needs privilege (root, or
``CAP_SYS_NICE``, or ``RLIMIT_NICE``): where the process does not have it, loads run at normal
priority (:func:`available` is False) rather than leave an engine niced for good.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

LOAD_NICE = 19
_T = TypeVar("_T")
_available: bool | None = None


def _probe() -> bool:
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, 1)
        os.setpriority(os.PRIO_PROCESS, tid, 0)
    except (OSError, AttributeError):
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, tid, 1)  # harmless: this probe thread ends
        return False
    return True


def available() -> bool:
    """Whether a niced thread can be put back to 0 here (probed once, in a short thread)."""
    global _available
    if _available is None:
        result: list[bool] = []
        probe = threading.Thread(target=lambda: result.append(_probe()), name="nice-probe")
        probe.start()
        probe.join()
        _available = bool(result and result[0])
        if not _available:
            log.info("loads while serving run at normal priority (cannot renice threads here)")
    return _available


def run_lowered(fn: Callable[..., _T], *args: object) -> _T:
    """``fn(*args)`` in the calling thread at ``LOAD_NICE``, back to 0 after. Blocking; call
    in a worker thread, only where :func:`available`."""
    tid = threading.get_native_id()
    os.setpriority(os.PRIO_PROCESS, tid, LOAD_NICE)
    try:
        return fn(*args)
    finally:
        os.setpriority(os.PRIO_PROCESS, tid, 0)


def restore_threads() -> int:
    """Every thread of the process at ``LOAD_NICE`` (an engine's, created while loading) back
    to 0; returns how many."""
    restored = 0
    for name in os.listdir("/proc/self/task"):
        tid = int(name)
        with contextlib.suppress(OSError):
            if os.getpriority(os.PRIO_PROCESS, tid) == LOAD_NICE:
                os.setpriority(os.PRIO_PROCESS, tid, 0)
                restored += 1
    return restored
