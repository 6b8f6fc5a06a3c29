"""Prometheus rules (promtool) and the Grafana dashboard (metric names from docs/DESIGN.md)."""

from __future__ import annotations

import json
from typing import Any

import yaml
from deploy_helpers import REPO, design_series_names, promql_metric_names, run, tool

RULES = REPO / "deploy" / "prometheus" / "rules.yml"
RULES_TEST = REPO / "deploy" / "prometheus" / "rules_test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "resnet-server.json"


def test_promtool_check_rules() -> None:
    proc = run(tool("promtool"), "check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_test_rules() -> None:
    proc = run(tool("promtool"), "test", "rules", str(RULES_TEST))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_rules_cover_the_required_signals() -> None:
    exprs = {r.get("alert") or r["record"]: r["expr"] for r in rules()}
    assert "ResnetHighErrorRate" in exprs
    assert "ResnetHighP99Latency" in exprs
    assert "ResnetQueueSaturated" in exprs and "ResnetRequestsRejected" in exprs
    assert "histogram_quantile(0.99" in exprs["resnet:request_duration_seconds:p99_5m"]
    assert (
        "resnet_request_duration_seconds_bucket" in exprs["resnet:request_duration_seconds:p99_5m"]
    )


def test_rules_use_only_known_metrics() -> None:
    recorded = {r["record"] for r in rules() if "record" in r}
    known = design_series_names() | recorded
    for r in rules():
        unknown = promql_metric_names(r["expr"]) - known
        assert not unknown, f"{r.get('alert') or r['record']}: {unknown}"


def dashboard_queries(dash: dict[str, Any]) -> list[str]:
    out: list[str] = []

    def panels(ps: list[dict[str, Any]]) -> None:
        for p in ps:
            out.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            panels(p.get("panels", []))

    panels(dash["panels"])
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]
            out.append(q["query"] if isinstance(q, dict) else q)
    return out


def test_dashboard_parses_and_has_the_panels() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"]
    titles = {p["title"] for p in dash["panels"]}
    for wanted in (
        "Request rate by outcome",
        "Request latency p50 / p99",
        "Mean batch size",
        "Queue depth",
        "Rejections by reason",
        "Inference time per batch p50 / p99",
    ):
        assert wanted in titles
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    (batch,) = [p for p in dash["panels"] if p["title"] == "Mean batch size"]
    expr = batch["targets"][0]["expr"]
    assert "resnet_inference_count_total" in expr and "resnet_inference_exec_count_total" in expr


def test_dashboard_uses_only_design_metrics() -> None:
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    assert len(queries) >= 10
    known = design_series_names()
    seen: set[str] = set()
    for q in queries:
        names = promql_metric_names(q)
        assert names, f"no metric found in {q!r}"
        assert names <= known, f"{q!r} uses {names - known}, not in docs/DESIGN.md"
        seen |= names
    assert {"resnet_requests_total", "resnet_queue_depth", "resnet_rejected_requests_total"} <= seen
