"""What the CPU can do for inference, read from ``/proc/cpuinfo`` (never assumed).

Machines differ: the same image may run on a Cascade Lake (AVX-512 VNNI, int8 only), a
Sapphire Rapids (AMX tiles: bf16 and int8) or an AMD EPYC with AVX2 alone. The engines use
this to decide what a precision can run on, ``/models`` and the benchmark header report it.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Flags that matter for convolutions, most capable first within each group.
MATRIX_FLAGS = (
    "amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512_vnni",
    "avx_vnni", "avx512f", "avx2", "fma", "asimd", "bf16", "i8mm",
)  # fmt: skip


@dataclass(frozen=True)
class CpuInfo:
    """The CPU model, vendor and the instruction-set flags of its first core."""

    vendor: str
    model: str
    flags: frozenset[str]

    @property
    def bf16(self) -> bool:
        """Native bf16 matrix arithmetic (AMX or AVX512_BF16 on x86, BF16 on Arm)."""
        return bool(self.flags & {"amx_bf16", "avx512_bf16", "bf16"})

    @property
    def int8_units(self) -> str:
        """Best int8 dot-product unit: ``amx``, ``vnni`` (AVX-512 or AVX VNNI), ``avx2``
        (emulated with 16-bit multiply-adds, slower and prone to saturation), or ``none``."""
        if "amx_int8" in self.flags:
            return "amx"
        if self.flags & {"avx512_vnni", "avx_vnni", "i8mm"}:
            return "vnni"
        if "avx2" in self.flags:
            return "avx2"
        return "none"

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for ``/models`` and benchmark headers."""
        return {
            "vendor": self.vendor,
            "model": self.model,
            "bf16": self.bf16,
            "int8_units": self.int8_units,
            "matrix_flags": [f for f in MATRIX_FLAGS if f in self.flags],
        }


def parse_cpuinfo(text: str) -> CpuInfo:
    """Parse ``/proc/cpuinfo`` text (x86 ``flags`` or Arm ``Features``; first core only)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # end of the first core's block
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    flags = fields.get("flags") or fields.get("features") or ""
    return CpuInfo(
        vendor=fields.get("vendor_id") or fields.get("cpu implementer") or "unknown",
        model=fields.get("model name") or platform.processor() or "unknown",
        flags=frozenset(flags.split()),
    )


def read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """This machine's CPU; an empty flag set where ``path`` cannot be read (not Linux)."""
    try:
        return parse_cpuinfo(path.read_text())
    except OSError:
        return CpuInfo("unknown", platform.processor() or "unknown", frozenset())


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: affinity mask, capped by a cgroup v2/v1 CPU quota if set.

    ``os.cpu_count()`` reports the host's cores, which oversubscribes a container limited
    to 2 CPUs on a 64-core node.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, int(quota + 0.5)))
    return max(1, cpus)


def _cgroup_cpu_quota(root: Path) -> float | None:
    """CPU limit in cores from cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``; None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        q = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        p = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if q <= 0 else q / p
    except (OSError, ValueError):
        return None
