"""GPU utilisation and memory while a phase runs, from ``nvidia-smi`` (``--gpu`` mode)."""

from __future__ import annotations

import shutil
import subprocess
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSample:
    """Mean utilisation (%) and peak memory used (MiB) over a phase."""

    util_pct: float
    mem_mib: float


class GpuSampler:
    """Polls ``nvidia-smi`` every ``interval_ms`` in a background process while running."""

    def __init__(self, interval_ms: int = 200) -> None:
        self.interval_ms = interval_ms
        self._proc: subprocess.Popen[str] | None = None
        self._rows: list[tuple[float, float]] = []
        self._thread: threading.Thread | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("nvidia-smi") is not None

    def start(self) -> None:
        self._rows = []
        self._proc = subprocess.Popen(
            [
                "nvidia-smi",
                "--query-gpu=utilization.gpu,memory.used",
                "--format=csv,noheader,nounits",
                f"-lms={self.interval_ms}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                util, mem = (float(x) for x in line.split(",")[:2])
            except ValueError:
                continue
            self._rows.append((util, mem))

    def stop(self) -> GpuSample | None:
        """Stop polling; None when nothing was read."""
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()
        if self._thread is not None:
            self._thread.join(2)
        if not self._rows:
            return None
        return GpuSample(
            sum(r[0] for r in self._rows) / len(self._rows), max(r[1] for r in self._rows)
        )
