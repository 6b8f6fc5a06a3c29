"""Validate custom resources against the CRD schemas vendored in k8s/schemas/, the way the API
server does with strict field validation (k8s/schemas/README.md, "How the tests read them").

``errors(doc)`` returns every violation as ``"path: message"`` strings (empty = valid), so a
test can assert the exact field a broken manifest is refused for.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from functools import cache
from typing import Any

from deploy_helpers import REPO, module

SCHEMAS = REPO / "k8s" / "schemas"
FILES = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "kserve/inferenceservice-v1beta1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda/scaledobject-v1alpha1.json",
}
# ObjectMeta, for what our manifests use. A CRD types `metadata` as a bare object; the API
# server checks it as ObjectMeta. Names: DNS-1123 labels (KServe requires one for the
# InferenceService; a ScaledObject's name becomes its HPA's `keda-hpa-<name>`).
_DNS1123_LABEL = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": _DNS1123_LABEL, "maxLength": 63},
        "namespace": {"type": "string", "pattern": _DNS1123_LABEL, "maxLength": 63},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}


def strict(node: Any) -> Any:
    """A copy of the schema ``node`` that refuses unknown fields as the API server does: every
    object schema without ``additionalProperties`` or ``x-kubernetes-preserve-unknown-fields``
    gets ``additionalProperties: false``."""
    if isinstance(node, list):
        return [strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in {"items", "additionalProperties", "anyOf", "allOf", "oneOf", "not"}:
            out[key] = strict(value)
        else:
            out[key] = value
    if (
        node.get("type") == "object"
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _list_map_keys(
    validator: Any, keys: list[str], instance: Any, schema: dict[str, Any]
) -> Iterator[Any]:
    """``x-kubernetes-list-type: map``: items unique on ``keys``, a missing key taking the
    item schema's default (a port without ``protocol`` is TCP)."""
    jsonschema = module("jsonschema", "jsonschema")
    if not isinstance(instance, list):
        return
    defaults = {
        k: schema.get("items", {}).get("properties", {}).get(k, {}).get("default") for k in keys
    }
    seen: dict[tuple[Any, ...], int] = {}
    for i, item in enumerate(instance):
        if not isinstance(item, dict):
            continue
        key = tuple(item.get(k, defaults[k]) for k in keys)
        if key in seen:
            yield jsonschema.ValidationError(
                f"items {seen[key]} and {i} have the same {dict(zip(keys, key, strict=True))}"
            )
        seen[key] = i


@cache
def raw_schema(api_version: str, kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / FILES[(api_version, kind)]).read_text())
    return schema


@cache
def _validator(api_version: str, kind: str) -> Any:
    jsonschema = module("jsonschema", "jsonschema")
    schema = strict(raw_schema(api_version, kind))
    schema["properties"]["metadata"] = OBJECT_META
    schema["required"] = sorted(
        {*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"}
    )
    schema["properties"]["apiVersion"] = {"const": api_version}
    schema["properties"]["kind"] = {"const": kind}
    cls = jsonschema.validators.extend(
        jsonschema.Draft7Validator, {"x-kubernetes-list-map-keys": _list_map_keys}
    )
    cls.check_schema(schema)
    return cls(schema)


def errors(doc: dict[str, Any]) -> list[str]:
    """Every way ``doc`` breaks its vendored CRD schema, as ``"a.b[0].c: message"``."""
    found = []
    for e in _validator(doc["apiVersion"], doc["kind"]).iter_errors(doc):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
        found.append(f"{path.lstrip('.') or '<root>'}: {e.message}")
    return sorted(found)


def cel_rules(node: Any, path: str = "") -> list[tuple[str, str]]:
    """Every ``x-kubernetes-validations`` rule of a schema, as ``(path, rule)``: CEL, which
    these tests cannot run, so each test pins the rules it checks by hand."""
    found = []
    if isinstance(node, dict):
        for rule in node.get("x-kubernetes-validations", []):
            found.append((path, rule["rule"]))
        for name, sub in node.get("properties", {}).items():
            found += cel_rules(sub, f"{path}.{name}".lstrip("."))
        if isinstance(node.get("items"), dict):
            found += cel_rules(node["items"], f"{path}[]")
    return found


def broken(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with ``value`` set at the dotted ``path`` (``a.b.0.c``; a missing last
    key is added)."""
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node: Any = out
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out
