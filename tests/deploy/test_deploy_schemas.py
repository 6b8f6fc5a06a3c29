"""The vendored schemas themselves (k8s/schemas/): as k8s/schemas/vendor.py writes them, pinned
where the README says, and the script's tag parsing on KEDA's own tag syntax. (Re-extracting
needs clones of kserve/kserve and kedacore/keda: `vendor.py --check`, by hand.)"""

from __future__ import annotations

import importlib.util
import json
import re
from types import ModuleType

import pytest
from crd_schemas import FILES, SCHEMAS, strict

VENDORED = [*FILES.values(), "keda/trigger-metadata.json"]


def vendor() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vendor", SCHEMAS / "vendor.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", VENDORED)
def test_files_are_as_the_script_writes_them(name: str) -> None:
    """Not edited by hand: the canonical serialisation of their own content."""
    text = (SCHEMAS / name).read_text()
    assert vendor().render(json.loads(text)) == text


def test_readme_names_the_pins_the_script_uses() -> None:
    v, readme = vendor(), (SCHEMAS / "README.md").read_text()
    for tag, crd in ((v.KSERVE_TAG, v.KSERVE_CRD), (v.KEDA_TAG, v.KEDA_CRD)):
        assert f"`{tag}`" in readme and f"`{crd}`" in readme
    commits = re.findall(r"# commit ([0-9a-f]{40})", (SCHEMAS / "vendor.py").read_text())
    assert len(commits) == 2 and all(f"`{c}`" in readme for c in commits)
    for project in ("kserve", "keda"):
        assert "Apache License" in (SCHEMAS / project / "LICENSE").read_text()


def test_schemas_are_the_storage_versions_we_use() -> None:
    isvc = json.loads(
        (SCHEMAS / FILES[("serving.kserve.io/v1beta1", "InferenceService")]).read_text()
    )
    so = json.loads((SCHEMAS / FILES[("keda.sh/v1alpha1", "ScaledObject")]).read_text())
    assert {"autoScaling", "containers", "minReplicas", "maxReplicas"} <= set(
        isvc["properties"]["spec"]["properties"]["predictor"]["properties"]
    )
    assert so["properties"]["spec"]["required"] == ["scaleTargetRef", "triggers"]
    assert vendor().without_descriptions(so) == so


def test_strict_closes_objects_but_not_maps_or_preserved_ones() -> None:
    schema = {
        "type": "object",
        "properties": {
            "closed": {"type": "object", "properties": {"a": {"type": "string"}}},
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
            "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "list": {"type": "array", "items": {"type": "object", "properties": {}}},
        },
    }
    out = strict(schema)
    assert out["additionalProperties"] is False
    assert out["properties"]["closed"]["additionalProperties"] is False
    assert out["properties"]["map"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in out["properties"]["open"]
    assert out["properties"]["list"]["items"]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # a copy


def test_trigger_keys_follow_kedas_tag_rules() -> None:
    """Lines as in KEDA v2.20.2's pkg/scalers (prometheus_scaler.go, cpu_memory_scaler.go,
    authentication_types.go)."""
    scaler = """
	ServerAddress       string `keda:"name=serverAddress,       order=triggerMetadata"`
	Threshold           float64 `keda:"name=threshold,           order=triggerMetadata"`
	IgnoreNullValues    bool   `keda:"name=ignoreNullValues,    order=triggerMetadata,            default=true"`
	AwsRegion           string `keda:"name=awsRegion,           order=triggerMetadata;authParams, optional"`
	Type string `keda:"name=type, order=triggerMetadata, enum=Utilization;AverageValue, optional, deprecated=The 'type' setting is DEPRECATED"`
	Username string `keda:"name=username, order=authParams"`
	PrometheusAuth      *authentication.Config `keda:"optional"`
"""
    auth = """
	APIKey       string `keda:"name=apiKey, order=triggerMetadata;authParams"`
	Modes []Type `keda:"name=authModes;authMode, order=triggerMetadata;authParams, enum=apiKey;basic, optional"`
"""
    keys = vendor().trigger_keys([(scaler, False), (auth, True)])
    assert keys == {
        "required": ["serverAddress", "threshold"],
        "optional": ["apiKey", "authMode", "authModes", "awsRegion", "ignoreNullValues"],
    }
