"""Shared helpers for the deployment tests (Dockerfile, k8s/, deploy/).

None of these tests need the server. External tools (hadolint, kubectl, promtool) and the
validator packages are skipped when missing on a developer machine, but FAIL in CI
(``CI=true``), so a CI image that lacks them cannot pass silently.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = ("cpu", "gpu")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing(what: str) -> None:
    """Skip locally, fail in CI."""
    msg = f"{what} is not installed (see docs/DEPLOYMENT.md, 'CI')"
    if in_ci():
        pytest.fail(f"{msg}; CI must install it", pytrace=False)
    pytest.skip(msg)


def tool(name: str) -> str:
    """Path of an executable: PATH first, then next to this interpreter (the venv's bin/)."""
    found = shutil.which(name)
    if found is None:
        candidate = Path(sys.executable).parent / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            found = str(candidate)
    if found is None:
        missing(f"`{name}`")
        raise AssertionError("unreachable")
    return found


def module(name: str, dist: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"Python package {dist!r}")
        raise AssertionError("unreachable") from None


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def promtool_check_expr(expr: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``promtool check rules`` on a rule file recording ``expr``: promtool's own PromQL parser
    (it has no command for a bare expression)."""
    rules = tmp_path / "expr.yml"
    rules.write_text(yaml_rule(expr))
    return run(tool("promtool"), "check", "rules", str(rules))


def yaml_rule(expr: str) -> str:
    import yaml

    return yaml.safe_dump(
        {"groups": [{"name": "check", "rules": [{"record": "check", "expr": expr}]}]}
    )


@cache
def _render(path: Path, kubectl: str) -> tuple[dict[str, Any], ...]:
    import yaml

    proc = run(kubectl, "kustomize", str(path))
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    docs = tuple(d for d in yaml.safe_load_all(proc.stdout) if d)
    assert docs, f"{path} rendered nothing"
    return docs


def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """The documents of k8s/overlays/<overlay>, as ``kubectl kustomize`` renders them."""
    return render_path(REPO / "k8s" / "overlays" / overlay)


def render_path(path: Path) -> tuple[dict[str, Any], ...]:
    """The documents of the kustomization in ``path`` (cached: do not modify them)."""
    return _render(path, tool("kubectl"))


def one(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


# --- metric names from docs/DESIGN.md -----------------------------------------------------------

_ROW = re.compile(r"^\|\s*`(resnet_[a-z0-9_]+)`\s*\|\s*([a-z]+)", re.MULTILINE)


@cache
def design_metrics() -> dict[str, str]:
    """``{name: type}`` from the Metrics table of docs/DESIGN.md."""
    text = (REPO / "docs" / "DESIGN.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    metrics = dict(_ROW.findall(section))
    assert metrics, "no metrics table found in docs/DESIGN.md"
    return metrics


@cache
def design_series_names() -> frozenset[str]:
    """Every series name the server exposes: histograms as _bucket/_sum/_count."""
    names: set[str] = set()
    for name, kind in design_metrics().items():
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return frozenset(names)


_PROMQL_WORDS = frozenset(
    [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "atop",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
        "inf",
        "nan",
    ]
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_BRACES = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_IDENT = re.compile(r"(?<![\w:.])[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)?")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression (or a Grafana ``label_values(...)`` query) reads.

    A deliberately small lexer: drops strings, label matchers, ranges, grouping clauses and
    variables; what is left that is not a function call, keyword or number is a metric name.
    """
    m = _LABEL_VALUES.match(expr)
    if m:
        return {m.group(1)} if m.group(1) else set()
    text = _STRING.sub(" ", expr)
    text = _VARIABLE.sub(" ", text)
    while True:
        reduced = _BRACES.sub(" ", text)
        if reduced == text:
            break
        text = reduced
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for m in _IDENT.finditer(text):
        ident = m.group(0)
        if text[m.end() :].lstrip().startswith("("):
            continue  # a function call
        if ident.lower() in _PROMQL_WORDS or re.fullmatch(r"[eE]\d*", ident):
            continue
        names.add(ident)
    return names
