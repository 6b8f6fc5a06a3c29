"""Markdown formatting shared by the reports: numbers, durations, tables."""

from __future__ import annotations

import math


def ms(seconds: float) -> str:
    """Seconds -> 'x.y' ms (adaptive precision); '-' for NaN."""
    if seconds != seconds:
        return "-"
    v = seconds * 1000
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def num(v: float, digits: int = 1) -> str:
    return "-" if v != v or math.isinf(v) else f"{v:.{digits}f}"


def pct(v: float, digits: int = 0) -> str:
    """A fraction as a percentage; '-' for NaN."""
    return "-" if v != v else f"{100 * v:.{digits}f}%"


def x(v: float) -> str:
    """A ratio as '1.23x'; '-' for NaN."""
    return "-" if v != v or math.isinf(v) else f"{v:.2f}x"


def mib(b: float) -> str:
    return num(b / 2**20, 0)


def yes(ok: bool | None) -> str:
    """'yes', '**no**', or '-' when there is no verdict."""
    return "-" if ok is None else "yes" if ok else "**no**"


def table(header: list[str], body: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in body]
    return [*out, ""]
