"""Small timing and statistics helpers. All durations are seconds unless named ``_ms``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np


def time_calls(fn: Callable[[], object], seconds: float, min_calls: int = 3) -> list[float]:
    """Call ``fn`` repeatedly for about ``seconds`` (at least ``min_calls`` times).

    Returns:
        the duration of each call, seconds.
    """
    out: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(out) < min_calls or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``; NaN when empty."""
    return float(np.percentile(values, q)) if len(values) else float("nan")


def median(values: Sequence[float]) -> float:
    """Median of ``values``; NaN when empty."""
    return percentile(values, 50)
