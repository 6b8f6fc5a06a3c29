"""CPU of every process on the machine over a phase, to tell a clean phase from one shared.

A phase is clean when nothing but the process group under test and the load generator (this
process) used the cores. :func:`snapshot` reads ``/proc/PID/stat`` of every process (utime +
stime, process group, name) and the machine's busy time from ``/proc/stat``; :func:`usage`
attributes the difference: the group under test, this process, every other process by name,
and the *unattributed* rest (processes that started and ended within the phase, the kernel's
own threads' share not in any ``/proc/PID/stat``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")

#: CPU of other processes (cores, averaged over the phase) above which a phase is *marked*.
OTHERS_LIMIT_CORES = 0.05


@dataclass(frozen=True)
class Proc:
    """One process at one instant: name, process group, CPU seconds (user + system), and its
    start time (clock ticks after boot: tells a reused PID from the same process)."""

    name: str
    pgid: int
    cpu_s: float
    started: int


@dataclass(frozen=True)
class Snapshot:
    """Every process by PID, the machine's busy CPU seconds (all cores), and when (monotonic)."""

    procs: dict[int, Proc]
    busy_s: float
    at: float


def _busy_seconds() -> float:
    """Busy CPU seconds of all cores since boot: ``/proc/stat`` minus idle and iowait."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICK


def snapshot() -> Snapshot:
    """Read every ``/proc/PID/stat`` now (processes that vanish meanwhile are skipped)."""
    procs: dict[int, Proc] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        f = text[text.rindex(")") + 2 :].split()
        cpu = (int(f[11]) + int(f[12])) / _TICK  # fields 14, 15: utime, stime
        procs[int(entry.name)] = Proc(name, int(f[2]), cpu, int(f[19]))  # 5: pgrp, 22: start
    return Snapshot(procs, _busy_seconds(), time.monotonic())


@dataclass(frozen=True)
class Usage:
    """CPU over a phase in cores (CPU seconds / wall seconds).

    ``under_test``: the process group under test; ``generator``: this process (the load
    generator); ``others``: every other process, by ``name[pid]`` (largest first);
    ``unattributed``: machine busy time no live process accounts for (>= 0).
    """

    wall_s: float
    under_test: float
    generator: float
    others: dict[str, float] = field(default_factory=dict)
    unattributed: float = 0.0

    @property
    def others_total(self) -> float:
        """Everything that is neither the process under test nor the load generator."""
        return sum(self.others.values()) + self.unattributed

    def marked(self, limit: float = OTHERS_LIMIT_CORES) -> bool:
        """True when the rest of the machine used more than ``limit`` cores."""
        return self.others_total > limit


def usage(
    before: Snapshot,
    after: Snapshot,
    under_test_pgid: int | None,
    under_test_pids: Collection[int] = (),
) -> Usage:
    """Attribute the CPU used between two snapshots. Under test: the process group
    ``under_test_pgid`` (None when nothing is under test but this process, e.g. an
    in-process measurement) and the processes ``under_test_pids`` (its descendants that
    left the group)."""
    wall = max(after.at - before.at, 1e-9)
    me = os.getpid()
    test = gen = 0.0
    others: dict[str, float] = {}
    for pid, p in after.procs.items():
        prev = before.procs.get(pid)
        same = prev is not None and prev.started == p.started  # else a new process: all of it
        used = p.cpu_s - (prev.cpu_s if prev is not None and same else 0.0)
        if used <= 0:
            continue
        if pid == me:
            gen += used
        elif (under_test_pgid is not None and p.pgid == under_test_pgid) or pid in under_test_pids:
            test += used
        else:
            others[f"{p.name}[{pid}]"] = used / wall
    attributed = test + gen + sum(others.values()) * wall
    rest = max(0.0, (after.busy_s - before.busy_s) - attributed)
    top = dict(sorted(others.items(), key=lambda kv: -kv[1]))
    return Usage(wall, test / wall, gen / wall, top, rest / wall)
