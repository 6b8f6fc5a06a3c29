"""The tiny PromQL lexer the dashboard/rules tests rely on: check it sees what it must."""

from __future__ import annotations

import pytest
from deploy_helpers import design_series_names, promql_metric_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (outcome) (rate(resnet_requests_total{job=~"$job"}[$__rate_interval]))',
            {"resnet_requests_total"},
        ),
        (
            "histogram_quantile(0.99, sum by (le, model) (rate(resnet_request_duration_seconds_bucket[5m])))",
            {"resnet_request_duration_seconds_bucket"},
        ),
        ("sum(rate(a_total[5m])) / on (job) group_left (x) sum(b)", {"a_total", "b"}),
        ("resnet:queue_depth:max > 200", {"resnet:queue_depth:max"}),
        ('max by (job) (resnet_model_info{random_weights="true"}) == 1', {"resnet_model_info"}),
        ('label_values(resnet_model_info{job=~"$job"}, model)', {"resnet_model_info"}),
        ("up == 0 and bogus_metric offset 5m", {"up", "bogus_metric"}),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


def test_design_metrics_parsed() -> None:
    names = design_series_names()
    assert "resnet_requests_total" in names
    assert "resnet_request_duration_seconds_bucket" in names
    assert "resnet_queue_depth" in names
    assert "resnet_inference_exec_count_total" in names
    assert "resnet_request_duration_seconds" not in names  # histograms only as their series
