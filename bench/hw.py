"""The machine: CPU model, flags, an estimate of peak FP32 FLOP/s, and load average."""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from contract.cpuinfo import available_cpus


@dataclass(frozen=True)
class CpuInfo:
    """``ghz`` is the clock used for the peak estimate; ``ghz_source`` says where it came from."""

    model: str
    cpus: int
    ghz: float
    ghz_source: str
    isa: str
    flops_per_cycle: int
    """FP32 FLOPs per cycle per core assumed: 2 FMA units x vector lanes x 2"""

    @property
    def peak_gflops(self) -> float:
        """Estimated peak FP32 GFLOP/s = cpus x GHz x FLOPs/cycle (an upper-bound estimate)."""
        return self.cpus * self.ghz * self.flops_per_cycle


def cpu_info() -> CpuInfo:
    """Read ``/proc/cpuinfo``; assume two FMA ports per core (server-class Intel/AMD)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""

    def field(name: str) -> str:
        m = re.search(rf"^{name}\s*:\s*(.*)$", text, re.M)
        return m.group(1).strip() if m else ""

    model = field("model name") or platform.processor() or "unknown"
    flags = set(field("flags").split())
    m = re.search(r"@\s*([\d.]+)\s*GHz", model)
    if m:
        ghz, src = float(m.group(1)), "model name"
    elif field("cpu MHz"):
        ghz, src = float(field("cpu MHz")) / 1000, "cpu MHz in /proc/cpuinfo"
    else:  # pragma: no cover - no cpuinfo
        ghz, src = 2.0, "assumed"
    if "avx512f" in flags:
        isa, fpc = "AVX-512 FMA", 64
    elif "avx2" in flags and "fma" in flags:
        isa, fpc = "AVX2 FMA", 32
    else:
        isa, fpc = "SSE", 8
    return CpuInfo(model, available_cpus(), ghz, src, isa, fpc)


def load_average() -> tuple[float, float, float]:
    """1, 5 and 15 minute load averages."""
    return os.getloadavg()
