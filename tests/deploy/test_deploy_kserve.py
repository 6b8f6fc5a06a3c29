"""KServe manifests (k8s/kserve): both layouts render, the InferenceService validates against
KServe v0.20.0's CRD schema (strict, k8s/schemas/), its pod against Kubernetes' own, and it
carries what KServe and the server need (ports, probes, autoscaling, scraping, auth)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from crd_schemas import broken, cel_rules, errors, raw_schema
from deploy_helpers import (
    REPO,
    design_series_names,
    module,
    one,
    promql_metric_names,
    promtool_check_expr,
    render_path,
)
from test_deploy_k8s import K8S_VERSION

LAYOUTS = ("cpu", "gpu")
ISVC = ("serving.kserve.io/v1beta1", "InferenceService")
# ComponentExtensionSpec: the predictor fields that are KServe's, not a PodSpec's (v0.20.0
# pkg/apis/serving/v1beta1/component.go).
EXTENSION_FIELDS = {
    "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType",
    "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher", "labels",
    "annotations", "deploymentStrategy", "autoScaling", "storageUris", "workerSpec",
    "model", "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface",
    "pmml", "lightgbm", "paddle", "storageContainerName",
}  # fmt: skip


def docs(layout: str) -> tuple[dict[str, Any], ...]:
    return render_path(REPO / "k8s" / "kserve" / layout)


def isvc(layout: str) -> dict[str, Any]:
    return one(docs(layout), "InferenceService")


def predictor(layout: str) -> dict[str, Any]:
    p: dict[str, Any] = isvc(layout)["spec"]["predictor"]
    return p


def container(layout: str) -> dict[str, Any]:
    c: dict[str, Any] = predictor(layout)["containers"][0]
    return c


def configmap_data(layout: str) -> dict[str, str]:
    ref = container(layout)["envFrom"][0]["configMapRef"]["name"]
    (cm,) = [d for d in docs(layout) if d["kind"] == "ConfigMap" and d["metadata"]["name"] == ref]
    data: dict[str, str] = cm["data"]
    return data


def env(layout: str) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(layout)["env"]}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_renders(layout: str) -> None:
    kinds = sorted(d["kind"] for d in docs(layout))
    assert kinds == [
        "ConfigMap",
        "InferenceService",
        "PodDisruptionBudget",
        "PodMonitor",
        "ServiceAccount",
    ]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_inferenceservice_matches_the_vendored_crd(layout: str) -> None:
    assert errors(isvc(layout)) == []
    assert cel_rules(raw_schema(*ISVC)) == []  # nothing left unchecked (crd_schemas.cel_rules)


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        # a typo in a predictor field, and an unknown top-level spec field
        ("spec.predictor.minReplica", 1,
         "spec.predictor: Additional properties are not allowed ('minReplica' was unexpected)"),
        ("spec.predictr", {},
         "spec: Additional properties are not allowed ('predictr' was unexpected)"),
        # a wrong type, a value outside an enum, a typo deep in the container
        ("spec.predictor.maxReplicas", "10", "spec.predictor.maxReplicas: '10' is not of type 'integer'"),
        ("spec.predictor.autoScaling.metrics.0.type", "Externall",
         "spec.predictor.autoScaling.metrics[0].type: 'Externall' is not one of "
         "['Resource', 'External', 'PodMetric']"),
        ("spec.predictor.containers.0.readinessProbe.httpGett", {},
         "spec.predictor.containers[0].readinessProbe: Additional properties are not allowed "
         "('httpGett' was unexpected)"),
        # two ports 8080/TCP (a list-map on containerPort + protocol, protocol defaulting to TCP)
        ("spec.predictor.containers.0.ports.1", {"name": "again", "containerPort": 8080},
         "spec.predictor.containers[0].ports: items 0 and 1 have the same "
         "{'containerPort': 8080, 'protocol': 'TCP'}"),
        ("metadata.name", "ResNet_server",
         "metadata.name: 'ResNet_server' does not match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'"),
    ],
)  # fmt: skip
def test_schema_catches_a_broken_field(path: str, value: Any, error: str) -> None:
    assert errors(broken(isvc("cpu"), path, value)) == [error]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_core_objects_and_the_predictor_pod_validate_strictly(layout: str) -> None:
    """The ServiceAccount and ConfigMap as they are; the predictor's PodSpec fields (KServe
    inlines a PodSpec) as a Pod, against Kubernetes' own schema."""
    kv = module("kubernetes_validate", "kubernetes-validate")
    for doc in docs(layout):
        if doc["kind"] in {"ServiceAccount", "ConfigMap", "PodDisruptionBudget"}:
            kv.validate(doc, K8S_VERSION, strict=True)
    pod_spec = {k: v for k, v in predictor(layout).items() if k not in EXTENSION_FIELDS}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod_spec}
    kv.validate(pod, K8S_VERSION, strict=True)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_podmonitor_schema(layout: str) -> None:
    """Prometheus Operator models, as test_deploy_k8s.test_servicemonitor_schema: the round
    trip must give the document back (unknown fields would be dropped)."""
    v1 = module("cloudcoil.models.prometheus_operator.v1", "cloudcoil-models-prometheus-operator")
    pm = one(docs(layout), "PodMonitor")
    dumped = v1.PodMonitor.model_validate(pm).model_dump(
        by_alias=True, exclude_unset=True, mode="json"
    )
    assert dumped == pm
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    assert ep["path"] == "/metrics"
    assert ep["port"] in {p["name"] for p in container(layout)["ports"]}
    # KServe labels every pod of an InferenceService with its name.
    assert pm["spec"]["selector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": isvc(layout)["metadata"]["name"]
    }


@pytest.mark.parametrize("layout", LAYOUTS)
def test_standard_mode_custom_predictor(layout: str) -> None:
    meta = isvc(layout)["metadata"]
    assert meta["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    c = container(layout)
    assert c["name"] == "kserve-container"  # KServe finds the predictor container by name
    assert c["image"] == f"ghcr.io/example/resnet-server:{layout}"
    ports = {p["name"]: p for p in c["ports"]}
    assert list(ports) == ["http1", "h2c"]  # the first port is the Service's port 80
    assert ports["http1"] == {"name": "http1", "containerPort": 8080, "protocol": "TCP"}
    assert ports["h2c"] == {"name": "h2c", "containerPort": 8001, "protocol": "TCP"}
    data = configmap_data(layout)
    assert c["args"] == ["--host", "0.0.0.0", "--port", "8080"]
    assert data["RESNET_PORT"] == "8080"
    assert data["RESNET_GRPC_PORT"] == "8001"
    assert data["RESNET_MODEL_DIR"] == "/models"  # baked into the image
    assert env(layout)["PROTOCOL"] == {"name": "PROTOCOL", "value": "v2"}
    assert (
        predictor(layout)["serviceAccountName"]
        == one(docs(layout), "ServiceAccount")["metadata"]["name"]
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_probes_budget_and_security(layout: str) -> None:
    p, c = predictor(layout), container(layout)
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http1"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http1"}
    startup = c["startupProbe"]
    assert startup["httpGet"] == {"path": "/healthz", "port": "http1"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(configmap_data(layout)["RESNET_DRAIN_TIMEOUT_S"])
    assert p["terminationGracePeriodSeconds"] > pre_stop + drain
    csc = c["securityContext"]
    assert p["securityContext"]["runAsNonRoot"] is True and p["securityContext"]["runAsUser"] != 0
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert p["automountServiceAccountToken"] is False
    ref = env(layout)["RESNET_INTRA_OP_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert ref == {"containerName": "kserve-container", "resource": "limits.cpu", "divisor": "1"}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rollouts_keep_capacity(layout: str) -> None:
    strategy = predictor(layout)["deploymentStrategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    pdb = one(docs(layout), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": isvc(layout)["metadata"]["name"]
    }


def test_gpu_layout() -> None:
    p, c = predictor("gpu"), container("gpu")
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert p["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert toleration in p["tolerations"]
    data = configmap_data("gpu")
    assert data["RESNET_PROVIDER"] == "cuda" and data["RESNET_ALLOW_CPU_FALLBACK"] == "false"
    assert "nvidia.com/gpu" not in container("cpu")["resources"]["limits"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_prometheus_scraping(layout: str) -> None:
    """KServe's pod webhook (v0.20.0 metrics_aggregate_injector.go) sets prometheus.io/port to
    9091, Knative's queue-proxy, when enable-prometheus-scraping is "true": wrong in Standard
    mode. So it is "false", and the pod annotations name the server's own port."""
    meta, p = isvc(layout)["metadata"], predictor(layout)
    assert meta["annotations"]["serving.kserve.io/enable-prometheus-scraping"] == "false"
    http1 = next(x for x in container(layout)["ports"] if x["name"] == "http1")
    assert p["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(http1["containerPort"]),
        "prometheus.io/path": "/metrics",
    }


def external_metric(layout: str) -> dict[str, Any]:
    (m,) = [m for m in predictor(layout)["autoScaling"]["metrics"] if m["type"] == "External"]
    ext: dict[str, Any] = m["external"]
    return ext


@pytest.mark.parametrize("layout", LAYOUTS)
def test_autoscaling_passes_kserves_keda_webhook_rules(layout: str) -> None:
    """What KServe v0.20.0's validating webhook checks with autoscalerClass keda
    (inference_service_validation.go: validateScalingKedaCompExtension, validateReplicas):
    the schema cannot."""
    meta, p = isvc(layout)["metadata"], predictor(layout)
    assert meta["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", meta["name"])  # IsvcRegexp
    assert "scaleMetric" not in p  # "ScaleMetric is not supported for KEDA"
    assert 1 <= p["minReplicas"] <= p["maxReplicas"]
    for m in p["autoScaling"]["metrics"]:
        if m["type"] == "External":
            assert m["external"]["metric"]["backend"] == "prometheus"
            assert m["external"]["metric"]["query"]
            # "the target threshold value should not be empty"
            assert m["external"]["target"]["value"]
        else:
            assert m["type"] == "Resource" and m["resource"]["name"] == "cpu"
            target = m["resource"]["target"]
            # "the cpu target value type should be Utilization"
            assert target["type"] == "Utilization"
            assert 1 <= target["averageUtilization"] <= 100
    assert {m["type"] for m in p["autoScaling"]["metrics"]} == {"External", "Resource"}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_scaling_query(layout: str, tmp_path: Path) -> None:
    """The query KServe hands KEDA: PromQL that promtool parses, on a metric the server exports,
    selecting the pods of KServe's predictor Deployment (<name>-predictor-...)."""
    metric = external_metric(layout)["metric"]
    query = metric["query"]
    assert promql_metric_names(query) == {"resnet_images_in_flight"} <= design_series_names()
    assert f'pod=~"{isvc(layout)["metadata"]["name"]}-predictor-.+"' in query
    assert query.startswith("max(sum by (model) (")  # the busiest model, summed over the pods
    assert metric["serverAddress"].startswith("http://")
    proc = promtool_check_expr(query, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broken_query = promtool_check_expr(query.replace("[1m]", "[1m"), tmp_path)
    assert broken_query.returncode == 1
    assert "could not parse expression" in broken_query.stdout + broken_query.stderr


@pytest.mark.parametrize("layout", LAYOUTS)
def test_thresholds_match_the_keda_scaledobjects(layout: str) -> None:
    """Same pod, same signal: KServe's threshold is the one k8s/keda/<layout> argues for, and
    below a replica's admission capacity."""
    keda = one(render_path(REPO / "k8s" / "keda" / layout), "ScaledObject")
    (trigger,) = [t for t in keda["spec"]["triggers"] if t["type"] == "prometheus"]
    value = external_metric(layout)["target"]["value"]
    assert value == trigger["metadata"]["threshold"]
    data = configmap_data(layout)
    capacity = int(data["RESNET_MAX_QUEUE_SIZE"]) + int(data["RESNET_INSTANCES"]) * int(
        data["RESNET_MAX_BATCH_SIZE"]
    )
    assert 0 < float(value) < capacity


@pytest.mark.parametrize("layout", LAYOUTS)
def test_api_key_from_a_required_secret(layout: str) -> None:
    ref = env(layout)["RESNET_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "resnet-server-api-key", "key": "api-key", "optional": False}


def test_storage_uri_component(tmp_path: Path) -> None:
    """Models from a URI: STORAGE_URI first in kserve-container's env (what KServe's storage
    initializer reads), RESNET_MODEL_DIR where it mounts them, as a user's overlay sets it."""
    rel = Path(os.path.relpath(REPO / "k8s" / "kserve", tmp_path))
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{rel / 'cpu'}]\n"
        f"components: [{rel / 'components' / 'storage-uri'}]\n"
        "patches:\n"
        "  - target: {group: serving.kserve.io, kind: InferenceService, name: resnet-server}\n"
        "    patch: |-\n"
        "      - op: replace\n"
        "        path: /spec/predictor/containers/0/env/0/value\n"
        "        value: gs://bucket/resnet/models\n"
    )
    rendered = render_path(tmp_path)
    doc = one(rendered, "InferenceService")
    assert errors(doc) == []
    c = doc["spec"]["predictor"]["containers"][0]
    assert c["env"][0] == {"name": "STORAGE_URI", "value": "gs://bucket/resnet/models"}
    assert "RESNET_API_KEY" in {e["name"] for e in c["env"]}
    ref = c["envFrom"][0]["configMapRef"]["name"]
    (cm,) = [d for d in rendered if d["kind"] == "ConfigMap"]
    assert cm["metadata"]["name"] == ref != container("cpu")["envFrom"][0]["configMapRef"]["name"]
    assert cm["data"]["RESNET_MODEL_DIR"] == "/mnt/models"  # KServe's DefaultModelLocalMountPath
