"""Server processes started by the benchmark: start, wait for readiness, RSS, CPU, pause, stop.

Every process is started in its own process group (``start_new_session``) and paused,
resumed and stopped through that group, so the children a server spawns (LitServe's
workers, which poll while idle and outlive a parent killed by PID) are paused and stopped
with it. :func:`isolate` pauses every other live server for the length of a phase.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


_HANDED_OUT: set[int] = set()
_PORTS_LOCK = threading.Lock()


def free_port() -> int:
    """An unused TCP port on 127.0.0.1, never one this process handed out before: servers
    start side by side, and the kernel may offer a port again once its probe socket closes,
    before the first server has bound it."""
    with _PORTS_LOCK:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(int(st[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid``'s live process tree."""
    total = 0
    for p in tree(pid):
        if (st := _stat(p)) is not None:
            total += int(st[11]) + int(st[12])  # utime, stime
    return total / _TICK


def group_members(pgid: int) -> list[int]:
    """Live processes (zombies excluded) whose process group is ``pgid``."""
    out = []
    for entry in Path("/proc").iterdir():
        st = _stat(int(entry.name)) if entry.name.isdigit() else None
        if st is not None and int(st[2]) == pgid and st[0] != "Z":  # fields 5 pgrp, 3 state
            out.append(int(entry.name))
    return out


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid``'s process tree, bytes (shared pages counted per process)."""
    total = 0
    for p in tree(pid):
        if (st := _stat(p)) is not None:
            total += int(st[21]) * _PAGE  # rss in pages
    return total


def vm_bytes(pid: int, field: str) -> int:
    """A memory field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``: the peak RSS) of ``pid``
    alone, in bytes; 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass
class ServerProc:
    """A server the benchmark started on 127.0.0.1:``port``; its output goes to ``log``."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, path: str, timeout: float = 180) -> None:
        """Poll ``GET path`` until 200; raise with the log tail if the process dies."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}"
                    )
                try:
                    if client.get(self.url + path).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready in {timeout:.0f} s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def rss_bytes(self) -> int:
        return rss_bytes(self.proc.pid)

    def pause(self) -> None:
        """SIGSTOP the whole process group (children included), and any descendant that left
        the group (``setsid``); no-op once it is gone."""
        self._signal(signal.SIGSTOP, self.escaped())

    def resume(self) -> None:
        """SIGCONT the whole process group and its escaped descendants."""
        self._signal(signal.SIGCONT, self.escaped())

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM the process group (and SIGCONT it, so a paused one sees the signal), then
        SIGKILL whatever of the group is left: the leader if it lingers, and children that
        outlived it; descendants that left the group get the same. Waits until none of them
        is alive."""
        _LIVE.pop(self.proc.pid, None)
        pgid = self.proc.pid
        escaped = self.escaped()  # before the leader goes: its orphans leave its tree
        self._signal(signal.SIGTERM, escaped)
        self._signal(signal.SIGCONT, escaped)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        # the leader is gone (or would not go): the rest gets a short grace, then SIGKILL
        deadline = time.monotonic() + (_ORPHAN_GRACE_S if self.proc.poll() is not None else 0)
        while group_members(pgid) or (escaped := _still_alive(escaped)):
            if time.monotonic() >= deadline:
                self._signal(signal.SIGKILL, escaped)
            time.sleep(0.05)
        self.proc.wait()

    def escaped(self) -> dict[int, str]:
        """Descendants outside the process group: PID -> start time (``/proc/PID/stat``
        field 22, to tell the same process from a reused PID)."""
        out = {}
        for p in tree(self.proc.pid)[1:]:
            if (st := _stat(p)) is not None and int(st[2]) != self.proc.pid:
                out[p] = st[19]
        return out

    def _signal(self, sig: signal.Signals, escaped: dict[int, str]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        for p in _still_alive(escaped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)


def _still_alive(procs: dict[int, str]) -> dict[int, str]:
    """Those of ``procs`` (PID -> start time) still running (not zombies), same start time."""
    out = {}
    for p, started in procs.items():
        if (st := _stat(p)) is not None and st[19] == started and st[0] != "Z":
            out[p] = started
    return out


#: Seconds the rest of a process group may take to exit after its leader did.
_ORPHAN_GRACE_S = 2.0

#: Servers started by :func:`start` and not yet stopped, by PID (= process group).
_LIVE: dict[int, ServerProc] = {}


def live() -> list[ServerProc]:
    """The servers started and not stopped yet."""
    return list(_LIVE.values())


@contextlib.contextmanager
def isolate(under_test: ServerProc | None) -> Iterator[list[ServerProc]]:
    """Pause every live server but ``under_test`` (all of them for None) for the block, and
    resume them after it, also on error. Yields the paused ones."""
    paused = [p for p in live() if p is not under_test and p.proc.poll() is None]
    for p in paused:
        p.pause()
    try:
        yield paused
    finally:
        for p in paused:
            p.resume()


def start(
    name: str, args: list[str], env: dict[str, str], port: int, log_dir: Path, cwd: Path = ROOT
) -> ServerProc:
    """Start ``python args...`` in its own process group (so stop() ends its whole tree), in
    ``cwd`` (another checkout's root runs that checkout's code: ``bench.ab``)."""
    log = log_dir / f"{name.replace(' ', '_').replace('/', '_')}-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RESNET_")}
    full_env.update(env)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    # gRPC off unless asked for: servers started side by side would all want port 8001.
    full_env.setdefault("RESNET_GRPC_PORT", "0")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProc(name, proc, port, log)
    _LIVE[proc.pid] = server
    return server
