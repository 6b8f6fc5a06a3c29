"""Several server processes on one port (``workers`` > 1), and the supervisor that owns them.

Why: one Python process is the limit where the engine is fast and the cores are many. On a
16-vCPU H200 machine one process capped JPEG ``/predict`` near 500 images/s (its decode
threads and event loop share one GIL) while four processes served 2.9x that
(docs/BENCHMARKS.md, "GPU"). Each worker is a whole server: its own sessions, batcher,
decode threads, admission limits and a ``cores // workers`` share of the cores.

What the supervisor (the process started by ``python -m server``) does:

- binds the port and hands the listening socket to every worker (spawned, not forked: a
  worker inherits no threads or sessions). The kernel gives each connection to a worker that
  is accepting, and a worker accepts only once its models are loaded, except worker 0 at
  start, which answers liveness and readiness (503 "loading") meanwhile as a single process
  does. So once the server is ready, no request meets a loading worker, not even a
  replacement's (unless no other worker is ready: below);
- SIGTERM or SIGINT: passed on to every worker, which drains as a single server does
  (readiness 503, ``shutdown_delay_s``, in-flight requests finished; a worker still loading
  exits without serving); a worker still there after the drain's deadline is killed (exit
  1). Workers run in their own process group, so a terminal's Ctrl-C reaches them once,
  through the supervisor; if the supervisor is killed, they get SIGTERM (``PDEATHSIG``);
- a worker that dies (killed, crashed, its models failed to load) is replaced after a
  backoff of its own slot (:mod:`server.restarts`: 1 s doubling to 30 s, reset once a
  worker has been ready for 60 s), while the other workers serve. Two exceptions stop the
  server (exit 1): at the *first start*, which lasts until every worker has been ready once,
  a worker whose models fail to load, or load but are not ready (a GPU out of memory for
  the last worker, say): a misconfiguration fails fast, and readiness and answers must not
  depend on which worker a connection reaches; and later, when no worker is ready and each
  slot's last 3 workers failed to get ready (``restarts.no_worker_can_serve``). A
  replacement accepts connections before it is loaded only while no other worker is ready,
  so that liveness is answered (and readiness says 503 "loading") as at the first start.
  Each decision is logged with its reason;
- metrics: prometheus_client's multiprocess mode, in a fresh directory removed at exit
  (made inside ``PROMETHEUS_MULTIPROC_DIR`` if that is set), so any worker's ``/metrics``
  and v2 statistics report the whole server; a dead worker's live gauges are dropped.

Test launchers that patch ``create_app`` (``tests/fault_server.py``) or name threads
(``bench/serve.py``) reach one process only: the workers are fresh interpreters.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

import uvicorn
from prometheus_client import multiprocess

from server.app import ON_READY
from server.restarts import Slot, no_worker_can_serve
from server.serving import serve
from server.settings import Settings
from server.threadname import name_os_thread

log = logging.getLogger("server.workers")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LOAD_FAILED = 4  # a worker's exit status when its models did not load or are not ready
_PR_SET_PDEATHSIG = 1
_KILL_GRACE_S = 5.0  # beyond the workers' own drain, before they are killed


class Supervisor:
    """Starts ``settings.workers`` server processes and keeps them running until a signal.

    Everything happens in :meth:`_watch`'s loop on the main thread: the signal handler only
    records the signal (and wakes the loop through the wakeup fd), so starting, reaping and
    stopping workers never interleave. Each worker has a pipe whose one message says its
    models are ready.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ctx = multiprocessing.get_context("spawn")
        self._slots = [Slot(i) for i in range(settings.workers)]
        self._workers: dict[int, BaseProcess] = {}
        self._ready_pipes: dict[int, Connection] = {}  # until its message or its exit
        self._restart_at: dict[int, float] = {}  # slot -> monotonic time of its replacement
        self._started = False  # every slot has been ready once: the first start is over
        self._began = 0.0
        self._signals: deque[int] = deque()  # received, not yet acted on
        self._sock: socket.socket | None = None  # open until the stop
        self._stop_by: float | None = None  # monotonic deadline once stopping
        self._status = 0

    def run(self) -> int:
        """Serve until a signal or a failure; returns the exit status: 0 when stopped by a
        signal and every worker drained, 1 after a failure or a kill at the deadline."""
        # uvicorn's own binding (IPv6, SO_REUSEADDR, inheritable; exits with its message).
        self._sock = uvicorn.Config(
            "", host=self.settings.host, port=self.settings.port, log_config=None
        ).bind_socket()
        port = self._sock.getsockname()[1]
        metrics_dir = _metrics_dir()
        os.environ[MULTIPROC_ENV] = str(metrics_dir)  # read by each spawned worker at import
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        log.info(
            "%d workers on %s:%d, %d cores each; metrics in %s",
            self.settings.workers,
            self.settings.host,
            port,
            self.settings.budget_cores,
            metrics_dir,
        )
        self._began = time.monotonic()
        try:
            for index in range(self.settings.workers):
                self._start(index, load_first=index > 0)
            self._watch(wake_r)
        finally:
            self._close_socket()
            for p in self._workers.values():  # only after an error in this loop
                p.kill()
                p.join()
            for pipe in self._ready_pipes.values():
                pipe.close()
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return self._status

    def _start(self, index: int, *, load_first: bool) -> None:
        ready_r, ready_w = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=_worker_main,
            name=f"worker-{index}",
            args=(self.settings, self._sock, index, load_first, os.getpid(), ready_w),
        )
        process.start()
        ready_w.close()  # the worker's copy is the only one: EOF once it exits
        self._workers[index] = process
        self._ready_pipes[index] = ready_r
        self._slots[index].started(time.monotonic())
        log.info("worker %d started (pid %s)", index, process.pid)

    def _watch(self, wake_r: int) -> None:
        while self._workers or (self._restart_at and self._stop_by is None):
            sentinels = {p.sentinel: i for i, p in self._workers.items()}
            pipes = {id(c): i for i, c in self._ready_pipes.items()}
            timeout = 0.5
            if self._restart_at:
                timeout = min(timeout, max(0.0, min(self._restart_at.values()) - time.monotonic()))
            ready = wait([*sentinels, *self._ready_pipes.values(), wake_r], timeout=timeout)
            if wake_r in ready:
                os.read(wake_r, 512)
            while self._signals:
                sig = self._signals.popleft()
                log.info("signal %d: stopping %d workers", sig, len(self._workers))
                self._stop(self._status, sig)
            for obj in ready:  # ready messages first: a worker may get ready, then die
                if isinstance(obj, Connection) and id(obj) in pipes:
                    self._on_message(pipes[id(obj)])
            for obj in ready:
                if isinstance(obj, int) and obj in sentinels:
                    index = sentinels[obj]
                    self._on_exit(index, self._workers.pop(index))
            if self._stop_by is None:
                now = time.monotonic()
                for index, at in sorted(self._restart_at.items()):
                    if at <= now:
                        del self._restart_at[index]
                        # Accept before loading only when nobody else can answer meanwhile.
                        self._start(index, load_first=any(s.serving for s in self._slots))
            elif time.monotonic() > self._stop_by:
                for index, p in self._workers.items():
                    log.error("worker %d still running after the drain deadline: killed", index)
                    p.kill()
                    self._status = 1
                self._stop_by = float("inf")  # killed once; wait() reaps them

    def _on_message(self, index: int) -> None:
        pipe = self._ready_pipes.pop(index)
        try:
            pipe.recv_bytes()
        except (EOFError, OSError):  # it exited without getting ready: its sentinel tells
            return
        finally:
            pipe.close()
        slot, now = self._slots[index], time.monotonic()
        slot.ready(now)
        log.info("worker %d ready after %.1f s", index, now - slot.started_at)
        if not self._started and all(s.ever_ready for s in self._slots):
            self._started = True
            log.info(
                "all %d workers ready in %.1f s: a worker that dies or fails to load from now "
                "on is replaced after its backoff",
                len(self._slots),
                time.monotonic() - self._began,
            )

    def _on_exit(self, index: int, process: BaseProcess) -> None:
        process.join(5)  # its sentinel can close an instant before it can be reaped
        code, pid = process.exitcode, process.pid
        if pid is not None:
            # Drop its live gauges; its counters stay in the totals.
            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
        pipe = self._ready_pipes.pop(index, None)
        if pipe is not None:
            pipe.close()
        slot = self._slots[index]
        if self._stop_by is not None:
            slot.exited(time.monotonic())
            log.info("worker %d exited (%s)", index, code)
            return
        if code == _LOAD_FAILED and not self._started:
            log.error(
                "worker %d could not load or ready its models: stopping the server "
                "(at the first start, a load failure is a misconfiguration)",
                index,
            )
            self._stop(1, signal.SIGTERM)
            return
        now = time.monotonic()
        ready_for = None if slot.ready_at is None else now - slot.ready_at
        delay = slot.exited(now)
        what = "could not load or ready its models" if code == _LOAD_FAILED else "died"
        when = (
            f"while loading ({slot.misses} in a row without getting ready)"
            if ready_for is None
            else f"after {ready_for:.1f} s ready"
        )
        if no_worker_can_serve(self._slots):
            log.error(
                "worker %d %s (exit %s) %s: no worker can serve (none ready, each of the %d "
                "slots' last workers failed to get ready): stopping the server",
                index,
                what,
                code,
                when,
                len(self._slots),
            )
            self._stop(1, signal.SIGTERM)
            return
        self._restart_at[index] = now + delay
        serving = sum(s.serving for s in self._slots)
        log.error(
            "worker %d %s (exit %s) %s: replacement in %g s; %d of %d workers serving",
            index,
            what,
            code,
            when,
            delay,
            serving,
            len(self._slots),
        )

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals.append(sig)

    def _stop(self, status: int, sig: int) -> None:
        """Pass ``sig`` on to every worker: the first makes each drain as a single server does,
        a second ends the drain's delay, a SIGINT after that forces the exit (uvicorn's
        rules). The supervisor's copy of the socket closes at once, so once every worker has
        closed its listener new connections are refused, not left waiting. Replacements not
        yet started never will be."""
        self._status = status
        self._restart_at.clear()
        if self._stop_by is None:
            s = self.settings
            self._stop_by = (
                time.monotonic() + s.shutdown_delay_s + s.drain_timeout_s + _KILL_GRACE_S
            )
            self._close_socket()
        for p in self._workers.values():
            if p.pid is not None:
                with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped
                    os.kill(p.pid, sig)

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _metrics_dir() -> Path:
    """A fresh directory for this run's metrics files (inside ``PROMETHEUS_MULTIPROC_DIR``
    when set: only what this run made is removed at exit)."""
    return Path(tempfile.mkdtemp(prefix="resnet-metrics-", dir=os.environ.get(MULTIPROC_ENV)))


def _worker_main(
    settings: Settings,
    sock: socket.socket,
    index: int,
    load_first: bool,
    parent: int,
    ready: Connection,
) -> None:
    """A worker process: one server on the supervisor's socket; one message on ``ready``
    once its models are ready."""
    os.setpgrp()
    _die_with(parent)
    threading.current_thread().name = f"worker-{index}"
    name_os_thread()  # ps and top show worker-N
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s [worker {index}]: %(message)s",
    )
    ON_READY.set(lambda: _tell_ready(ready))
    error = serve(settings, [sock], load_first=load_first)
    if error:
        log.error("exiting: %s", error)
        sys.exit(_LOAD_FAILED)


def _tell_ready(ready: Connection) -> None:
    with contextlib.suppress(OSError):  # the supervisor is gone: PDEATHSIG drains this one
        ready.send_bytes(b"ready")
    ready.close()


def _die_with(parent: int) -> None:
    """Get SIGTERM (a drain) if the supervisor dies without stopping this worker (killed)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
