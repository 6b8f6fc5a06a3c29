"""The layers, as facts of the import graph (read with ``ast``, nothing imported).

``contract/`` is what the server, the exporter and the benchmark share (model metadata,
agreement, verification photos, image decoding, CPU facts, domain errors): it imports nothing
of ``server``. ``export/`` may use the server's engines but never its front doors. No module
imports itself back through others, at import time or inside functions.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("contract", "server", "export", "bench")
FRONT_DOORS = ("server.http", "server.grpc", "fastapi", "starlette", "uvicorn")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def graph() -> dict[str, set[str]]:
    """Every module of the packages -> the modules it imports (any import anywhere in it)."""
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                found.add(target)
                # `from pkg import module` imports the module
                found.update(
                    f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules
                )
        edges[name] = {m for m in found if m in modules or m.split(".")[0] not in PACKAGES} - {name}
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among the project's modules, or None (depth-first, colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in edges:
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_is_read() -> None:
    edges = graph()
    assert "contract.images.preprocess" in edges["server.flow.pipeline"]
    assert "server.models.engines" in edges["export.verify"]


def test_no_import_cycle() -> None:
    assert _cycle(graph()) is None


def test_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("package", ["contract", "export"])
def test_no_front_door_below_the_server(package: str) -> None:
    wrong = {
        (name, dep)
        for name, deps in graph().items()
        if _under(name, (package,))
        for dep in deps
        if _under(dep, FRONT_DOORS)
    }
    assert wrong == set()


def test_contract_imports_nothing_of_the_server() -> None:
    wrong = {
        (name, dep)
        for name, deps in graph().items()
        if _under(name, ("contract",))
        for dep in deps
        if _under(dep, ("server", "export", "bench"))
    }
    assert wrong == set()


def test_front_doors_enter_the_pipeline_once() -> None:
    """``/predict``, v2 REST and gRPC reach the pipeline through ``Pipeline.infer`` only (and
    ``parse``, its parse thread); admission, growth, decoding and submitting are its own."""
    calls: dict[str, set[str]] = {}
    for pkg in ("server/http", "server/grpc", "server/v2"):
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Attribute)
                    and node.value.attr == "pipeline"
                ):
                    calls.setdefault(node.attr, set()).add(path.relative_to(ROOT).as_posix())
    assert set(calls) == {"infer", "parse"}, calls
    assert len(calls["infer"]) == 3, calls  # predict, v2 REST, gRPC


def test_fmt_skip_only_on_module_level_tables() -> None:
    """``ruff format`` lays out the code; a ``# fmt: skip`` sits only on the closing bracket of
    a module-level table (pyproject.toml, [tool.ruff])."""
    misplaced = [
        f"{path.relative_to(ROOT)}:{i}"
        for pkg in (*PACKAGES, "tests")
        for path in (ROOT / pkg).rglob("*.py")
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if line.rstrip().endswith("# fmt: skip") and line.rstrip() not in _TABLE_ENDS
    ]
    assert misplaced == []


_TABLE_ENDS = {f"{b}  # fmt: skip" for b in ("}", ")", "]", "})", "])", ")]", "}]")}
