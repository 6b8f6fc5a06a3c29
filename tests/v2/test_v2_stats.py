"""The statistics extension counts exactly what was served, from the /metrics counters."""

from __future__ import annotations

import time

import numpy as np

from tests.conftest import ServerProcess
from tests.imagegen import jpeg
from tests.v2.helpers import bytes_input, client, images_input, metric, random_images, stats


def test_stats_count_exactly_what_was_sent_and_match_metrics(server: ServerProcess) -> None:
    before = stats(server, "resnet50")
    started_ms = time.time() * 1000
    tc = client(server)
    try:
        # Sequential requests: each one is its own execution, with all its rows together.
        for n in (1, 3, 8):
            tc.infer("resnet50", [images_input(random_images(n, seed=n))])
        tc.infer("resnet50", [bytes_input([jpeg(seed=1), jpeg(seed=2)])])
    finally:
        tc.close()
    after = stats(server, "resnet50")
    assert started_ms - 1000 <= after["last_inference"] <= time.time() * 1000 + 1000
    assert after["inference_count"] - before["inference_count"] == 1 + 3 + 8 + 2
    assert after["execution_count"] - before["execution_count"] == 4
    inf, bef = after["inference_stats"], before["inference_stats"]
    assert inf["success"]["count"] - bef["success"]["count"] == 4
    assert inf["fail"]["count"] == bef["fail"]["count"]
    assert inf["success"]["ns"] > bef["success"]["ns"]
    assert inf["queue"]["count"] - bef["queue"]["count"] == 4
    assert inf["compute_infer"]["count"] - bef["compute_infer"]["count"] == 4
    assert inf["compute_infer"]["ns"] > bef["compute_infer"]["ns"]
    assert inf["compute_input"]["count"] - bef["compute_input"]["count"] == 2  # two JPEGs
    # Same numbers as the Prometheus endpoint.
    assert after["inference_count"] == metric(
        server, "resnet_inference_count_total", model="resnet50"
    )
    assert after["execution_count"] == metric(
        server, "resnet_inference_exec_count_total", model="resnet50"
    )
    assert inf["success"]["count"] == metric(
        server, "resnet_requests_total", model="resnet50", outcome="ok"
    )
    assert inf["compute_infer"]["ns"] == round(
        metric(server, "resnet_inference_seconds_sum", model="resnet50") * 1e9
    )
    # batch_stats: executions by exact batch size.
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    old = {b["batch_size"]: b["compute_infer"]["count"] for b in before["batch_stats"]}
    delta = {k: v - old.get(k, 0) for k, v in sizes.items() if v != old.get(k, 0)}
    assert delta == {1: 1, 2: 1, 3: 1, 8: 1}  # sizes 1, 2 (the two jpegs), 3, 8


def test_failures_are_counted_and_all_models_listed(server: ServerProcess) -> None:
    before = stats(server, "resnet18")
    r = server.client().post("/v2/models/resnet18/infer", content=b'{"inputs": []}')
    assert r.status_code == 400
    after = stats(server, "resnet18")
    assert (
        after["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"] + 1
    )
    assert after["inference_count"] == before["inference_count"]
    every = server.client().get("/v2/models/stats").json()["model_stats"]
    assert sorted(m["name"] for m in every) == ["resnet18", "resnet50"]
    assert np.all([m["version"] == "1" for m in every])
