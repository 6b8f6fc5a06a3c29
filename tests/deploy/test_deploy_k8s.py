"""Kubernetes manifests: both overlays render, validate strictly, and carry the properties
the server's lifecycle needs (probes, drain budget, security, scaling)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from deploy_helpers import OVERLAYS, REPO, module, one, render, render_path

# Newest Kubernetes the pinned kubernetes-validate (>= 1.37) ships schemas for.
K8S_VERSION = "1.37.0"
CRD_KINDS = {"ServiceMonitor"}


def container(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (c,) = [c for c in pod["containers"] if c["name"] == "server"]
    return c


def configmap_data(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    ref = container(docs)["envFrom"][0]["configMapRef"]["name"]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == ref]
    return cm["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renders(overlay: str) -> None:
    kinds = sorted(d["kind"] for d in render(overlay))
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_validate_strict(overlay: str) -> None:
    kv = module("kubernetes_validate", "kubernetes-validate")
    for doc in render(overlay):
        if doc["kind"] in CRD_KINDS:
            continue  # CRDs: validated by test_servicemonitor_schema
        kv.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_validate_strict_catches_typos() -> None:
    """Negative control: the validator really is strict for the version used."""
    kv = module("kubernetes_validate", "kubernetes-validate")
    bad = copy.deepcopy(one(render("cpu"), "Deployment"))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servicemonitor_schema(overlay: str) -> None:
    """Validate against the Prometheus Operator CRD models (cloudcoil-models-prometheus-operator).

    model_validate checks types; the exclude_unset round trip must give the document back
    unchanged, which rejects unknown fields (the models ignore extras by default)."""
    v1 = module("cloudcoil.models.prometheus_operator.v1", "cloudcoil-models-prometheus-operator")
    docs = render(overlay)
    sm = one(docs, "ServiceMonitor")
    model = v1.ServiceMonitor.model_validate(sm)
    assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == sm
    bad = copy.deepcopy(sm)
    bad["spec"]["endpoints"][0]["pathh"] = "/metrics"
    assert (
        v1.ServiceMonitor.model_validate(bad).model_dump(
            by_alias=True, exclude_unset=True, mode="json"
        )
        != bad
    )

    svc = one(docs, "Service")
    (ep,) = sm["spec"]["endpoints"]
    assert ep["path"] == "/metrics"
    assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}
    labels = svc["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_and_selectors(overlay: str) -> None:
    docs = render(overlay)
    svc, dep, pdb = one(docs, "Service"), one(docs, "Deployment"), one(docs, "PodDisruptionBudget")
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["http"]["targetPort"] == "http"
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    for selector in (
        svc["spec"]["selector"],
        pdb["spec"]["selector"]["matchLabels"],
        dep["spec"]["selector"]["matchLabels"],
    ):
        assert all(pod_labels.get(k) == v for k, v in selector.items())
    c = container(docs)
    assert {"name": "http", "containerPort": 8000, "protocol": "TCP"} in c["ports"]
    assert configmap_data(docs)["RESNET_PORT"] == "8000"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rolling_update_keeps_capacity(overlay: str) -> None:
    strategy = one(render(overlay), "Deployment")["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes(overlay: str) -> None:
    c = container(render(overlay))
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] in {"/healthz", "/readyz"}
    # model load + warm-up budget before liveness starts counting
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_budget(overlay: str) -> None:
    """SIGTERM comes after preStop; the grace period must cover preStop + drain + exit."""
    docs = render(overlay)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    data = configmap_data(docs)
    drain = float(data["RESNET_DRAIN_TIMEOUT_S"])
    delay = float(data.get("RESNET_SHUTDOWN_DELAY_S", 0))  # server-side pre-drain delay
    assert pre_stop >= 5
    assert pod["terminationGracePeriodSeconds"] > pre_stop + delay + drain


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_context(overlay: str) -> None:
    docs = render(overlay)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    psc, csc = pod["securityContext"], c["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert csc["runAsNonRoot"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in csc["capabilities"]
    assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in vols[mounts["/tmp"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_threads_follow_cpu_limit(overlay: str) -> None:
    c = container(render(overlay))
    env = {e["name"]: e for e in c["env"]}
    ref = env["RESNET_INTRA_OP_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert ref["resource"] == "limits.cpu"
    assert str(ref["divisor"]) == "1"
    assert ref.get("containerName", c["name"]) == c["name"]
    assert "cpu" in c["resources"]["limits"]
    assert c["envFrom"][0]["configMapRef"]["name"].startswith("resnet-server-config")


def test_cpu_overlay() -> None:
    docs = render("cpu")
    c = container(docs)
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert configmap_data(docs)["RESNET_PROVIDER"] == "auto"
    assert c["image"].endswith(":cpu")
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "resnet-server",
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"


def test_gpu_overlay() -> None:
    docs = render("gpu")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert configmap_data(docs)["RESNET_PROVIDER"] == "cuda"
    assert c["image"].endswith(":gpu")

    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert len(pods) == 1
    name = pods[0]["metric"]["name"]
    assert pods[0]["target"]["type"] == "AverageValue"

    # the Prometheus adapter rule serves exactly that metric, from a series the server exports
    values = yaml.safe_load((REPO / "deploy" / "prometheus-adapter" / "values.yaml").read_text())
    served = {r["name"]["as"]: r for r in values["rules"]["custom"]}
    assert name in served
    assert served[name]["seriesQuery"].startswith("resnet_images_in_flight{")
    assert set(served[name]["resources"]["overrides"]) == {"namespace", "pod"}


# Every kustomization a user applies: each must take the API key from a required Secret.
APPLIED = ("overlays/cpu", "overlays/gpu", "keda/cpu", "keda/gpu", "kserve/cpu", "kserve/gpu")


def secret_refs(node: Any) -> list[dict[str, Any]]:
    """Every ``secretKeyRef`` anywhere in ``node``."""
    if isinstance(node, list):
        return [r for v in node for r in secret_refs(v)]
    if not isinstance(node, dict):
        return []
    here = [node["secretKeyRef"]] if "secretKeyRef" in node else []
    return here + [r for v in node.values() for r in secret_refs(v)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_key_comes_from_a_required_secret(overlay: str) -> None:
    """Fails closed: without the Secret the pod does not start (CreateContainerConfigError);
    an `optional: true` reference would start it unauthenticated."""
    env = {e["name"]: e for e in container(render(overlay))["env"]}
    assert env["RESNET_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "resnet-server-api-key", "key": "api-key", "optional": False}
    }


def test_base_alone_has_no_api_key_reference() -> None:
    """The key is the component's (k8s/components/api-key): an overlay without it serves
    without authentication by a visible decision, not because a Secret is missing."""
    docs = render_path(REPO / "k8s" / "base")
    assert secret_refs(list(docs)) == []
    assert "RESNET_API_KEY" not in {e["name"] for e in container(docs)["env"]}


@pytest.mark.parametrize("path", APPLIED)
def test_no_secret_is_optional(path: str) -> None:
    refs = secret_refs(list(render_path(REPO / "k8s" / path)))
    assert refs == [{"name": "resnet-server-api-key", "key": "api-key", "optional": False}]
