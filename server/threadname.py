"""OS names for the server's threads, so ``top -H``, ``py-spy`` and ``/proc/PID/task/*/comm``
show ``preprocess_0`` or ``resnet50-run0_0`` instead of ``python`` (Python 3.11 leaves every
thread it starts with the process's name)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

_PR_SET_NAME = 15


def name_os_thread() -> None:
    """Set the calling thread's OS name (``comm``, at most 15 bytes) from its Python name.

    A ``ThreadPoolExecutor`` initializer; does nothing off Linux or without a C library.
    """
    if not sys.platform.startswith("linux") or (libc := ctypes.util.find_library("c")) is None:
        return
    name = threading.current_thread().name.encode()[:15]
    ctypes.CDLL(libc).prctl(_PR_SET_NAME, name, 0, 0, 0)
