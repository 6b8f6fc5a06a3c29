"""What one benchmark run measured (:class:`Results`): filled by :mod:`bench.run`, read by the
summaries, the report and the plots (a module of its own, so that those never import the run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import limits, overload
from .agreement import Agreement, Sourced
from .config import BenchConfig
from .hw import CpuInfo
from .load import PhaseResult
from .paired import Paired
from .sweep import Breakdowns
from .variants import Plan


@dataclass
class Results:
    """Everything one run measured (seconds, images/s, requests/s unless named otherwise).
    Variants are keyed ``<served name>@<provider>``."""

    cfg: BenchConfig
    command: str
    started: str
    cpu: CpuInfo
    cpu_features: dict[str, Any]
    """``contract.cpuinfo.read_cpuinfo().describe()``: vendor, bf16, int8 units, matrix flags"""
    threads: int
    pool_threads: int
    load_before: tuple[float, float, float]
    plan: Plan
    runtimes: dict[str, str] = field(default_factory=dict)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    duration_s: float = 0.0
    engines: dict[str, dict[str, Any]] = field(default_factory=dict)
    """variant -> what the in-process engine reported (precision executed, runtime, devices)"""
    files: dict[str, dict[str, str]] = field(default_factory=dict)
    """model file name -> its metadata (precision, weights, random_weights)"""
    served: dict[str, dict[str, Any]] = field(default_factory=dict)
    """variant -> the server's ``GET /models`` entry"""
    raw: list[limits.EnginePoint] = field(default_factory=list)
    prep: list[limits.PreprocessPoint] = field(default_factory=list)
    pipe: dict[str, limits.PipelinePoint] = field(default_factory=dict)
    ceiling: dict[str, limits.Ceiling] = field(default_factory=dict)
    """variant -> what decode + its engine alone would serve on all cores"""
    agreement: dict[str, Agreement] = field(default_factory=dict)
    recorded: dict[str, Sourced] = field(default_factory=dict)
    agreement_notes: dict[str, str] = field(default_factory=dict)
    fast: dict[str, str] = field(default_factory=dict)
    """architecture -> its fast variant (best in-process ceiling among the served ones)"""
    paired: dict[str, Paired] = field(default_factory=dict)
    closed: list[PhaseResult] = field(default_factory=list)
    open: list[PhaseResult] = field(default_factory=list)
    batching: list[PhaseResult] = field(default_factory=list)
    overload: list[overload.Overload] = field(default_factory=list)
    splits: list[PhaseResult] = field(default_factory=list)
    split_flags: dict[str, dict[str, str]] = field(default_factory=dict)
    """split label -> the flags that made it"""
    breakdowns: Breakdowns = field(default_factory=dict)
    policy: dict[str, dict[str, object]] = field(default_factory=dict)
    peer_notes: dict[str, str] = field(default_factory=dict)
    load_jpeg_kb: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)
    """wall seconds per step of the run (server start-ups included)"""
