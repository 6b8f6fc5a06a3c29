"""Re-extract the vendored CRD schemas from KServe's and KEDA's release tags.

    git clone --branch v0.20.0 --depth 1 https://github.com/kserve/kserve /tmp/kserve
    git clone --branch v2.20.2 --depth 1 https://github.com/kedacore/keda /tmp/keda
    python k8s/schemas/vendor.py --kserve /tmp/kserve --keda /tmp/keda          # rewrite
    python k8s/schemas/vendor.py --kserve /tmp/kserve --keda /tmp/keda --check  # compare

Reads every file with ``git show <tag>:<path>``, so a clone with other commits checked out still
gives the pinned release. Writes, under k8s/schemas/:

* ``kserve/inferenceservice-v1beta1.json``: the ``openAPIV3Schema`` of the InferenceService CRD's
  storage version, as published (KServe generates it without descriptions);
* ``keda/scaledobject-v1alpha1.json``: the same for KEDA's ScaledObject, descriptions dropped
  (they are prose; validation never reads them);
* ``keda/trigger-metadata.json``: for the scalers our manifests use, the ``metadata`` keys each
  one reads, from the ``keda:"name=..., order=triggerMetadata"`` struct tags of its Go config
  (the CRD types ``metadata`` as a free map of strings, so only the scaler knows its keys);
* ``kserve/LICENSE``, ``keda/LICENSE``: each project's Apache-2.0 licence, as it ships it.

Each JSON file is compact, keys sorted, one trailing newline: a re-pin is reviewed with
``python -m json.tool``. Exit status 1 with ``--check`` when a file differs.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent

KSERVE_TAG = "v0.20.0"  # commit 1fb781055dd1567164358233e1125142ca6ef1fe
KEDA_TAG = "v2.20.2"  # commit 68a5b5028f35b22d50597c69819ab32c4e92f21a
KSERVE_CRD = "config/crd/full/serving.kserve.io_inferenceservices.yaml"
KEDA_CRD = "config/crd/bases/keda.sh_scaledobjects.yaml"
# Scaler config structs: scaler (trigger ``type``) -> (Go file whose tags name its keys, whether
# the struct is embedded as optional). The Prometheus scaler embeds ``authentication.Config``
# (``keda:"optional"``: authModes and the API-key settings), so none of its keys is required.
KEDA_SCALERS = {
    "prometheus": [("pkg/scalers/prometheus_scaler.go", False),
                   ("pkg/scalers/authentication/authentication_types.go", True)],
    "cpu": [("pkg/scalers/cpu_memory_scaler.go", False)],
}  # fmt: skip

_TAG = re.compile(r'keda:"([^"]*)"')


def show(repo: Path, tag: str, path: str) -> str:
    """The text of ``path`` at ``tag`` in the git repository ``repo``."""
    proc = subprocess.run(["git", "-C", str(repo), "show", f"{tag}:{path}"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"{repo}: cannot read {tag}:{path}: {proc.stderr.strip()}")
    return proc.stdout


def crd_schema(text: str, kind: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the storage version of the CRD ``text`` (YAML) for ``kind``."""
    crd = yaml.safe_load(text)
    if crd["spec"]["names"]["kind"] != kind:
        raise SystemExit(f"expected the CRD of {kind}, got {crd['spec']['names']['kind']}")
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def without_descriptions(node: Any) -> Any:
    """``node`` with every ``description`` keyword removed (a property *named* description,
    under ``properties``, is kept)."""
    if isinstance(node, dict):
        return {k: (without_descriptions(v) if k != "properties" else
                    {p: without_descriptions(s) for p, s in v.items()})
                for k, v in node.items() if k != "description"}  # fmt: skip
    if isinstance(node, list):
        return [without_descriptions(v) for v in node]
    return node


def trigger_keys(sources: list[tuple[str, bool]]) -> dict[str, list[str]]:
    """``{"required": [...], "optional": [...]}`` trigger metadata keys from the Go struct tags
    of ``sources`` (text, embedded as optional): a key is optional when its struct is, when its
    tag says ``optional`` or gives a ``default=``, or when it has aliases
    (``name=authModes;authMode``: either will do). Deprecated keys are left out: KEDA refuses
    them (``scaler ... info: <message>``)."""
    required: set[str] = set()
    optional: set[str] = set()
    for text, embedded_optional in sources:
        for tag in _TAG.findall(text):
            parts = [part.strip().partition("=") for part in tag.split(",")]
            fields = {key: value for key, _, value in parts if key}
            if "name" not in fields or "triggerMetadata" not in fields.get("order", "").split(";"):
                continue
            names = fields["name"].split(";")
            if "deprecated" in fields:
                continue
            if embedded_optional or "optional" in fields or "default" in fields or len(names) > 1:
                optional.update(names)
            else:
                required.update(names)
    return {"required": sorted(required), "optional": sorted(optional - required)}


def render(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def outputs(kserve: Path, keda: Path) -> dict[Path, str]:
    isvc = crd_schema(show(kserve, KSERVE_TAG, KSERVE_CRD), "InferenceService")
    scaled = crd_schema(show(keda, KEDA_TAG, KEDA_CRD), "ScaledObject")
    triggers = {
        scaler: trigger_keys([(show(keda, KEDA_TAG, path), opt) for path, opt in files])
        for scaler, files in KEDA_SCALERS.items()
    }
    return {
        HERE / "kserve" / "inferenceservice-v1beta1.json": render(without_descriptions(isvc)),
        HERE / "keda" / "scaledobject-v1alpha1.json": render(without_descriptions(scaled)),
        HERE / "keda" / "trigger-metadata.json": render(triggers),
        HERE / "kserve" / "LICENSE": show(kserve, KSERVE_TAG, "LICENSE"),
        HERE / "keda" / "LICENSE": show(keda, KEDA_TAG, "LICENSE"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kserve", type=Path, required=True, help="a git clone of kserve/kserve")
    ap.add_argument("--keda", type=Path, required=True, help="a git clone of kedacore/keda")
    ap.add_argument("--check", action="store_true", help="compare, write nothing")
    args = ap.parse_args(argv)
    differ = []
    for path, text in outputs(args.kserve, args.keda).items():
        if args.check:
            if not path.is_file() or path.read_text() != text:
                differ.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(HERE.parents[1])} ({len(text)} bytes)")
    for path in differ:
        print(f"differs from {KSERVE_TAG}/{KEDA_TAG}: {path.relative_to(HERE.parents[1])}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
