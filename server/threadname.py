"""OS names for the server's threads, so ``top -H``, ``py-spy`` and ``/proc/PID/task/*/comm``
show ``preprocess_0`` or ``resnet50-run0_0`` instead of ``python`` (Python 3.11 leaves every
thread it starts with the process's name)."""

from __future__ import annotations

import ctypes
import sys
import threading

_PR_SET_NAME = 15


def name_os_thread() -> None:
    """Set the calling thread's OS name (``comm``, at most 15 bytes) from its Python name.

    A ``ThreadPoolExecutor`` initializer: it must never raise (a failing initializer breaks
    the pool), so it does nothing off Linux or where ``prctl`` is not there.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        # The C library is already loaded into the process: no lookup, no subprocess.
        ctypes.CDLL(None).prctl(
            _PR_SET_NAME, threading.current_thread().name.encode()[:15], 0, 0, 0
        )
    except (OSError, AttributeError):
        return
