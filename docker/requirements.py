"""Print the server's runtime requirements from pyproject.toml, one per line.

Used by the Dockerfile so the image installs exactly the dependencies declared in
pyproject.toml, with one substitution: the ``onnxruntime`` requirement is replaced by a
pinned ``onnxruntime==X`` (CPU image) or ``onnxruntime-gpu==X`` (GPU image). Installing
both wheels would put two copies of the ``onnxruntime`` module in one environment.

    python docker/requirements.py --ort onnxruntime-gpu==1.31.1 > requirements.txt
    python docker/requirements.py --ort onnxruntime==1.31.1 --extra export > requirements.txt
    python docker/requirements.py --ort onnxruntime==1.31.1 --extra "$CPU_EXTRAS"  # "" = none

``--extra`` takes one group or several separated by spaces or commas, so that a Dockerfile
build argument can list any number of groups (or none) without shell word-splitting.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirements(pyproject: Path, ort: str, extras: tuple[str, ...] = ()) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    deps: list[str] = list(project["dependencies"])
    groups = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in groups:
            raise SystemExit(
                f"pyproject.toml has no optional-dependencies group {extra!r} "
                f"(it has: {', '.join(sorted(groups))})"
            )
        deps += groups[extra]
    out: list[str] = []
    replaced = False
    for dep in deps:
        m = _NAME.match(dep)
        name = m.group(1).lower().replace("_", "-") if m else ""
        if name == "onnxruntime":
            out.append(ort)
            replaced = True
        else:
            out.append(dep)
    if not replaced:
        raise SystemExit("pyproject.toml declares no onnxruntime dependency")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    p.add_argument("--ort", required=True, help="requirement that replaces onnxruntime")
    p.add_argument(
        "--extra",
        action="append",
        default=[],
        help="also these optional-dependencies groups (space or comma separated)",
    )
    args = p.parse_args()
    extras = tuple(name for value in args.extra for name in re.split(r"[\s,]+", value) if name)
    reqs = requirements(args.pyproject, args.ort, extras)
    sys.stdout.write("\n".join(reqs) + "\n")


if __name__ == "__main__":
    main()
