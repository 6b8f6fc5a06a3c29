"""Image decodes in worker processes, each held to a CPU-time and a memory budget.

Why processes: once Pillow's C code decodes, a thread cannot be stopped, and a file's
structure (hundreds of progressive scans, strip tables far longer than the image) can make a
file inside every size limit cost a hundred times what its pixels justify: two such files
once held both decode threads of a 2-core server for 16 s. A process can be killed.

Each thread of the preprocessing pool owns one worker process (started from a fork server
that has the decoder imported, so a replacement starts in milliseconds) and hands it one
image at a time over a pipe: the encoded bytes in, the uint8 crop out. While it waits, the
thread watches three things and kills the worker at the first:

- **CPU time** (the worker's own, from ``/proc``, so waiting for a core is not charged):
  :attr:`DecodeBudget.base_cpu_s` to read the header, then that plus
  :attr:`DecodeBudget.cpu_s_per_mpixel` per megapixel the header declares;
- **memory**: the worker's address space is capped (``RLIMIT_AS``) at what it had when it
  started plus :attr:`DecodeBudget.memory_bytes`; an allocation past it fails in the worker;
- **its request being abandoned** (answered already: failed, timed out, client gone), so
  nothing keeps running after the answer.

A killed worker is replaced before the thread takes its next image. With
``decode_isolation=auto`` (the default) a file that is cheap by construction (small, few
pixels, a C decoder: :func:`decodes_inline`) decodes in the thread itself, where its worst
case is inside its budget anyway and the hand-off would be pure cost. Linux only (``/proc``,
``RLIMIT_AS``); elsewhere use ``decode_isolation=thread``. Everything here blocks: call it
from the preprocessing pool's threads.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import resource
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Final

import numpy as np

from contract.errors import (
    ImageTooCostly,
    ImageTooLarge,
    InvalidImage,
    ServerError,
    UnsupportedImageFormat,
)
from contract.images.decode import DECODER_MODULES, DecodeLimits, declared_size
from contract.images.preprocess import preprocess
from contract.modelmeta import Preprocessing

log = logging.getLogger(__name__)

_ERRORS: Final[dict[str, type[ServerError]]] = {
    e.__name__: e for e in (InvalidImage, UnsupportedImageFormat, ImageTooLarge)
}
_TICKS: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_SLICE_S: Final = 0.05  # how often a waiting thread looks at its request's abandonment
_MIB: Final = 1 << 20
_SOCKET_BUFFER: Final = 1 << 20  # capped by net.core.wmem_max / rmem_max
_START_TIMEOUT_S: Final = 60.0
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_KEEP_BYTES: Final = 256 << 20


@dataclass(frozen=True)
class DecodeBudget:
    """What one image's decode and transform may cost in its worker process.

    ``base_cpu_s``: CPU seconds to identify the file and read its header, and the fixed part
    of the whole budget; ``cpu_s_per_mpixel``: CPU seconds more per megapixel the header
    declares; ``memory_bytes``: address space the worker may add to what it started with.
    """

    base_cpu_s: float = 0.25
    cpu_s_per_mpixel: float = 0.05
    memory_bytes: int = 1 << 30

    def cpu_seconds(self, pixels: int) -> float:
        """The CPU budget of a decode whose header declares ``pixels``."""
        return self.base_cpu_s + self.cpu_s_per_mpixel * pixels / 1e6


OnKill = Callable[[str], None]
"""Told why a worker was killed: ``cpu``, ``memory``, ``abandoned`` or ``crashed``."""


#: Bytes and declared pixels up to which such a file decodes in the calling thread: its worst
#: case is within its own budget, so a worker process would only add its hand-off (measured:
#: 15% of a 2-core server's throughput on 500x375 JPEGs). The worst measured inside these
#: bounds: a 2 MP progressive JPEG at the 100-scan limit, ~0.2 s of CPU (budget 0.35 s).
INLINE_MAX_BYTES: Final = 1 << 20
INLINE_MAX_PIXELS: Final = 2_000_000


def decodes_inline(data: bytes, limits: DecodeLimits) -> bool:
    """Whether ``data`` is cheap by construction: a small file of a C-decoded format that
    declares few pixels. Reads the header only; a header that cannot be read goes to a
    worker, which reports the error.
    """
    if len(data) > INLINE_MAX_BYTES or not data.startswith(_INLINE_MAGIC):
        return False
    try:
        width, height = declared_size(data, limits)
    except ServerError:
        return False
    return width * height <= INLINE_MAX_PIXELS


# Formats whose decoders are C and whose cost, once the structure checks have passed, is
# bounded by the file's bytes and declared pixels: JPEG, PNG, GIF, RIFF (WebP's container;
# other RIFF is refused by the decoder). BMP's RLE decoder is Python and TIFF has many codecs:
# those always go to a worker.
_INLINE_MAGIC: Final = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8", b"RIFF")


class DecodeWorker:
    """One worker process and the pipe to it. Not thread-safe: one pool thread owns it."""

    def __init__(self, context: Any, budget: DecodeBudget, on_kill: OnKill) -> None:
        self._context = context
        self._budget = budget
        self._on_kill = on_kill
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None

    def start(self) -> None:
        """Start the process if there is none (idempotent), and wait until it is ready.

        Raises:
            RuntimeError: it did not get ready in time (its thread's decodes then fail).
        """
        if self._process is not None and self._process.is_alive():
            return
        parent, child = self._context.Pipe()
        _widen(parent)
        process = self._context.Process(
            target=_worker_main,
            args=(child, self._budget.memory_bytes),
            daemon=True,
            name="decode-worker",
        )
        process.start()
        child.close()
        self._process, self._conn = process, parent
        # Wait for its "ready": what it spends starting (importing the main module, as every
        # multiprocessing child does) is not charged to the first image's budget.
        if not parent.poll(_START_TIMEOUT_S) or parent.recv() != ("ready",):
            self.close()
            raise RuntimeError(f"decode worker not ready within {_START_TIMEOUT_S:g} s")

    def close(self) -> None:
        """Stop the process now (SIGKILL: it holds nothing worth finishing)."""
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(5)
        self._process = self._conn = None

    def preprocess(
        self,
        data: bytes,
        spec: Preprocessing,
        limits: DecodeLimits,
        out: np.ndarray,
        abandoned: threading.Event,
    ) -> bool:
        """Decode ``data`` and transform it into ``out`` (uint8 ``(crop, crop, 3)``).

        Returns False, having written nothing, when ``abandoned`` was set first (the worker
        is then replaced).

        Raises:
            InvalidImage, UnsupportedImageFormat, ImageTooLarge: as :func:`contract.images.preprocess.preprocess`.
            ImageTooCostly: the decode passed its CPU or memory budget (the worker is replaced).
        """
        for attempt in (1, 2):  # a worker that died between images (OOM-killed) is replaced
            self.start()
            assert self._conn is not None and self._process is not None
            start_cpu = _cpu_seconds(self._process.pid)
            try:
                self._conn.send((spec.to_dict(), limits))
                self._conn.send_bytes(data)
                break
            except OSError:
                self.close()
                if attempt == 2:
                    raise
        budget = self._budget.base_cpu_s
        pixels = 0
        while True:
            message = self._wait(budget, start_cpu, abandoned, pixels)
            if message is None:
                return False
            kind = message[0]
            if kind == "size":  # the header is read: the rest of the budget follows its size
                pixels = message[1] * message[2]
                budget = self._budget.cpu_seconds(pixels)
                continue
            if kind == "ok":
                assert self._conn is not None
                np.copyto(out, np.frombuffer(self._conn.recv_bytes(), np.uint8).reshape(out.shape))
                return True
            if kind == "memory":
                self.close()  # a MemoryError can leave Pillow's state half-built: start afresh
                self._on_kill("memory")
                raise ImageTooCostly(
                    f"image decode needed more than its memory budget of "
                    f"{self._budget.memory_bytes // _MIB} MiB"
                )
            raise _ERRORS[message[1]](message[2])

    def _wait(
        self, budget: float, start_cpu: float, abandoned: threading.Event, pixels: int
    ) -> tuple[Any, ...] | None:
        """The worker's next message; None (worker killed) if the request was abandoned.

        Raises ImageTooCostly (worker killed) once its CPU time passes ``budget``.
        """
        assert self._conn is not None and self._process is not None
        pid = self._process.pid
        while True:
            # CPU time grows at most one second per second (the worker is single-threaded),
            # so until ``budget - used`` seconds have passed it cannot have overrun.
            used = _cpu_seconds(pid) - start_cpu
            if used > budget:
                self.close()
                self._on_kill("cpu")
                size = f"{pixels / 1e6:.1f} MP declared" if pixels else "before its header"
                raise ImageTooCostly(
                    f"image decode passed its CPU budget of {budget:.2f} s ({size}; "
                    f"{self._budget.base_cpu_s:g} s + {self._budget.cpu_s_per_mpixel:g} s per "
                    "megapixel): the file's structure costs more than its pixels justify"
                )
            if abandoned.is_set():
                self.close()
                self._on_kill("abandoned")
                return None
            try:
                if self._conn.poll(min(_SLICE_S, max(budget - used, 0.001))):
                    received: tuple[Any, ...] = self._conn.recv()
                    return received
            except (EOFError, OSError):
                self._process.join(1)
                code = self._process.exitcode
                self.close()
                self._on_kill("crashed")
                raise ImageTooCostly(
                    f"image decode ended its worker process (exit {code}): treated as too costly"
                ) from None


def _widen(conn: Connection) -> None:
    """Socket buffers that hold a typical photo and a crop in one write each way: a
    default-sized buffer splits a 150 kB crop into several wake-ups of both processes."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
    finally:
        sock.close()


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 if it has gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15)


def _worker_main(conn: Connection, memory_bytes: int) -> None:
    """The worker process: decode what arrives until the pipe closes."""
    _keep_heap()
    _limit_memory(memory_bytes)
    conn.send(("ready",))
    while True:
        try:
            spec_dict, limits = conn.recv()
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            spec = Preprocessing.from_dict(spec_dict)
            width, height = declared_size(data, limits)
            conn.send(("size", width, height))
            crop = preprocess(data, spec, limits)
        except MemoryError:
            conn.send(("memory",))
            continue
        except (InvalidImage, UnsupportedImageFormat, ImageTooLarge) as e:
            conn.send(("error", type(e).__name__, e.message))
            continue
        conn.send(("ok",))
        conn.send_bytes(crop.tobytes())


def _keep_heap() -> None:
    """Keep freed memory in this process's heap instead of returning it to the kernel.

    glibc hands allocations over 32 MiB (at most, 128 kB to start with) to ``mmap`` and
    unmaps them when freed, so every decode's image buffers are fresh pages, each a page
    fault: measured with ``bench.isolation``, 1.3 ms of a 2-3 ms decode. The worker's heap
    cannot outgrow its memory budget (``RLIMIT_AS``), which bounds what this keeps.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)
    libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)


def _limit_memory(extra: int) -> None:
    """Cap this process's address space at its current size plus ``extra`` bytes."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[0])
    except OSError:
        return
    limit = pages * resource.getpagesize() + extra
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class DecodePool:
    """The worker processes of the preprocessing pool's threads, one per thread, made on
    first use (or by :meth:`start_workers`) and killed by :meth:`close`."""

    def __init__(self, budget: DecodeBudget, on_kill: OnKill = lambda reason: None) -> None:
        self.budget = budget
        self._on_kill = on_kill
        self._context = multiprocessing.get_context("forkserver")
        # The fork server imports the decoder (and Pillow's plugins for every format) once;
        # each worker forks from it ready to decode, its budget spent on the image alone.
        self._context.set_forkserver_preload(["server.flow.decodepool", *DECODER_MODULES])
        self._local = threading.local()
        self._workers: list[DecodeWorker] = []
        self._lock = threading.Lock()

    def worker(self) -> DecodeWorker:
        """The calling thread's worker."""
        worker: DecodeWorker | None = getattr(self._local, "worker", None)
        if worker is None:
            worker = DecodeWorker(self._context, self.budget, self._on_kill)
            self._local.worker = worker
            with self._lock:
                self._workers.append(worker)
        return worker

    def start_worker(self) -> None:
        """Start the calling thread's worker now (a pool initializer: no first-image wait).
        Never raises: an initializer that raises breaks the whole thread pool; a worker that
        could not start is started again by its first image."""
        start = time.monotonic()
        try:
            self.worker().start()
        except Exception:
            log.exception("decode worker did not start; its thread retries with its first image")
            return
        log.debug("decode worker started in %.3f s", time.monotonic() - start)

    def close(self) -> None:
        with self._lock:
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.close()
