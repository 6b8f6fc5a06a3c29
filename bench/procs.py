"""Server processes started by the benchmark: start, wait for readiness, RSS, CPU, stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM the process group, then SIGKILL it if it lingers."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start(name: str, args: list[str], env: dict[str, str], port: int, log_dir: Path) -> ServerProc:
    """Start ``python args...`` in its own process group (so stop() ends its whole tree)."""
    log = log_dir / f"{name.replace(' ', '_').replace('/', '_')}-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RESNET_")}
    full_env.update(env)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    # gRPC off unless asked for: servers started side by side would all want port 8001.
    full_env.setdefault("RESNET_GRPC_PORT", "0")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=full_env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return ServerProc(name, proc, port, log)
