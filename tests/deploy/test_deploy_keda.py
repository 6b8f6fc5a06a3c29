"""KEDA overlays (k8s/keda): the overlays' Deployment with a ScaledObject instead of the HPA,
validated against KEDA v2.20.2's CRD schema (strict, k8s/schemas/) and its scalers' metadata
keys, on a query that promtool parses and that reads what the server exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from crd_schemas import SCHEMAS, broken, cel_rules, errors, raw_schema
from deploy_helpers import (
    REPO,
    design_series_names,
    module,
    one,
    promql_metric_names,
    promtool_check_expr,
    render,
    render_path,
)
from test_deploy_k8s import CRD_KINDS, K8S_VERSION

OVERLAYS = ("cpu", "gpu")
SCALED_OBJECT = ("keda.sh/v1alpha1", "ScaledObject")
# The one CEL rule of KEDA v2.20.2's ScaledObject schema, checked by hand below.
MIN_LE_MAX = (
    "!has(self.minReplicaCount) || self.minReplicaCount <= "
    "(has(self.maxReplicaCount) ? self.maxReplicaCount : 100)"
)


def docs(overlay: str) -> tuple[dict[str, Any], ...]:
    return render_path(REPO / "k8s" / "keda" / overlay)


def scaled_object(overlay: str) -> dict[str, Any]:
    return one(docs(overlay), "ScaledObject")


def trigger(so: dict[str, Any], kind: str) -> dict[str, Any]:
    (t,) = [t for t in so["spec"]["triggers"] if t["type"] == kind]
    return t


def trigger_errors(so: dict[str, Any]) -> list[str]:
    """Metadata keys each scaler reads (k8s/schemas/keda/trigger-metadata.json): unknown keys
    (KEDA ignores them unless KEDA_CHECK_UNEXPECTED_SCALERS_PARAMS=enabled, then logs them),
    missing required ones (KEDA refuses: 'missing required parameter'), a threshold that is not
    a number, and the CEL rule of the schema."""
    keys = json.loads((SCHEMAS / "keda" / "trigger-metadata.json").read_text())
    found = []
    for i, t in enumerate(so["spec"]["triggers"]):
        known = keys[t["type"]]
        given = set(t["metadata"])
        for k in sorted(given - set(known["required"]) - set(known["optional"])):
            found.append(f"triggers[{i}].metadata: unknown key {k!r} for scaler {t['type']!r}")
        for k in sorted(set(known["required"]) - given):
            found.append(f"triggers[{i}].metadata: missing required key {k!r}")
        for k in {"threshold", "activationThreshold", "value"} & given:
            try:
                float(t["metadata"][k])
            except ValueError:
                found.append(f"triggers[{i}].metadata.{k}: {t['metadata'][k]!r} is not a number")
    spec = so["spec"]
    if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
        found.append("spec: minReplicaCount must be less than or equal to maxReplicaCount")
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renders_the_overlay_with_a_scaledobject_instead_of_the_hpa(overlay: str) -> None:
    kinds = sorted(d["kind"] for d in docs(overlay))
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "ScaledObject",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )
    plain = {d["kind"]: d for d in render(overlay)}
    for d in docs(overlay):
        if d["kind"] != "ScaledObject":
            assert d == plain[d["kind"]], d["kind"]  # the overlay's objects, unchanged


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_validate_strictly(overlay: str) -> None:
    kv = module("kubernetes_validate", "kubernetes-validate")
    for doc in docs(overlay):
        if doc["kind"] not in CRD_KINDS | {"ScaledObject"}:
            kv.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaledobject_matches_the_vendored_crd_and_its_scalers(overlay: str) -> None:
    so = scaled_object(overlay)
    assert errors(so) == []
    assert cel_rules(raw_schema(*SCALED_OBJECT)) == [("spec", MIN_LE_MAX)]
    assert trigger_errors(so) == []


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        ("spec.pollingIntervall", 15,
         "spec: Additional properties are not allowed ('pollingIntervall' was unexpected)"),
        ("spec.minReplicaCount", "2", "spec.minReplicaCount: '2' is not of type 'integer'"),
        ("spec.pollingInterval", 0, "spec.pollingInterval: 0 is less than the minimum of 1"),
        # a misspelt key: the real one is missing and the typo unknown
        ("spec.scaleTargetRef", {"nam": "resnet-server"},
         "spec.scaleTargetRef: 'name' is a required property\n"
         "spec.scaleTargetRef: Additional properties are not allowed ('nam' was unexpected)"),
        ("spec.triggers.0.metadata.threshold", 16,
         "spec.triggers[0].metadata.threshold: 16 is not of type 'string'"),
        ("spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleUp.policies.0.value", None,
         "spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleUp.policies[0].value: "
         "None is not of type 'integer'"),
    ],
)  # fmt: skip
def test_schema_catches_a_broken_field(path: str, value: Any, error: str) -> None:
    assert errors(broken(scaled_object("cpu"), path, value)) == sorted(error.split("\n"))


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        ("spec.triggers.0.metadata", {"serverAddress": "http://p:9090", "query": "up",
                                      "treshold": "16"},
         ["triggers[0].metadata: missing required key 'threshold'",
          "triggers[0].metadata: unknown key 'treshold' for scaler 'prometheus'"]),
        ("spec.triggers.0.metadata.threshold", "sixteen",
         ["triggers[0].metadata.threshold: 'sixteen' is not a number"]),
        ("spec.minReplicaCount", 11,
         ["spec: minReplicaCount must be less than or equal to maxReplicaCount"]),
    ],
)  # fmt: skip
def test_trigger_checks_catch_what_the_schema_lets_through(
    path: str, value: Any, error: list[str]
) -> None:
    so = broken(scaled_object("cpu"), path, value)
    assert errors(so) == []  # metadata is a free map of strings in the CRD
    assert sorted(trigger_errors(so)) == sorted(error)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scales_the_deployment(overlay: str) -> None:
    so, dep = scaled_object(overlay), one(docs(overlay), "Deployment")
    assert so["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": dep["metadata"]["name"],
    }
    hpa = one(render(overlay), "HorizontalPodAutoscaler")  # what it replaces
    assert so["spec"]["minReplicaCount"] == hpa["spec"]["minReplicas"]
    assert so["spec"]["maxReplicaCount"] == hpa["spec"]["maxReplicas"]
    assert (
        so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        == hpa["spec"]["behavior"]
    )
    # KEDA's cpu trigger needs a CPU request on every container of the target.
    for c in dep["spec"]["template"]["spec"]["containers"]:
        assert c["resources"]["requests"]["cpu"]
    cpu = trigger(so, "cpu")
    assert cpu["metricType"] == "Utilization"
    (hpa_cpu,) = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert int(cpu["metadata"]["value"]) == hpa_cpu["resource"]["target"]["averageUtilization"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_query(overlay: str, tmp_path: Path) -> None:
    """promtool parses the query; it reads only resnet_images_in_flight, from the Service the
    ServiceMonitor scrapes (its `job` label is the Service's name)."""
    t = trigger(scaled_object(overlay), "prometheus")
    query = t["metadata"]["query"]
    assert promql_metric_names(query) == {"resnet_images_in_flight"} <= design_series_names()
    svc = one(docs(overlay), "Service")
    assert f'job="{svc["metadata"]["name"]}"' in query
    assert query.startswith("max(sum by (model) (")  # the busiest model, summed over the pods
    assert t["metadata"]["ignoreNullValues"] == "false"
    proc = promtool_check_expr(query, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_threshold_below_the_admission_capacity(overlay: str) -> None:
    """Per replica, below what a replica admits; the CPU one is also below the in-flight value
    at which a replica started refusing in tests/reliability/test_scaling_signal.py."""
    so = scaled_object(overlay)
    threshold = float(trigger(so, "prometheus")["metadata"]["threshold"])
    ref = one(docs(overlay), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    (cm,) = [
        d
        for d in docs(overlay)
        if d["kind"] == "ConfigMap"
        and d["metadata"]["name"] == ref["envFrom"][0]["configMapRef"]["name"]
    ]
    data = cm["data"]
    headroom = int(data["RESNET_INSTANCES"]) * int(data["RESNET_MAX_BATCH_SIZE"])
    capacity = int(data["RESNET_MAX_QUEUE_SIZE"]) + headroom
    # Under what the engines take at once: admission refuses no request below that many
    # (server/flow/admission.py, `headroom`; the deadline still can, on a starved node, which is
    # why the measured CPU threshold sits far below it).
    assert 0 < threshold < headroom < capacity
