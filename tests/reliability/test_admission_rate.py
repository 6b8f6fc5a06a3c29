"""Admission's drain rate is the capacity seen under a backlog, not the demand of the moment.

A real server (resnet18, batches of 8, 2 s queue timeout): saturated once, so that it measures
what it finishes while images wait; then a trickle of one image every 0.25 s with a slow
upload keeping the model in flight (the finishing rate now says about 4 images/s, what was
asked); then a 32-image burst. Judged by the finishing rate, its 25 images beyond the engines'
headroom would wait about 6 s and it would be refused at the door (the bug this file guards:
"the rate admission divides by follows demand, not capacity"); judged by the capacity it
drains in well under a second and must be served whole.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, start_server
from tests.imagegen import jpeg
from tests.reliability.helpers import connect, metric, read_response, wait_for

BATCH, QUEUE = 8, 96
IMAGES = [jpeg(64, 64, seed=i) for i in range(32)]


@pytest.fixture(scope="module")
def srv(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = start_server(
        model_dir,
        tmp_path_factory.mktemp("admission-rate"),
        models="resnet18",
        max_batch_size=BATCH,
        max_queue_size=QUEUE,
        queue_timeout_ms=2000,
        warmup_batch_sizes="1,8",
        min_upload_bytes_per_s=0,
    )
    yield s
    s.stop()


def post(srv: ServerProcess, images: list[bytes]) -> httpx.Response:
    files = {f"f{i}": (f"{i}.jpg", im, "image/jpeg") for i, im in enumerate(images)}
    with srv.new_client() as c:
        return c.post("/predict", files=files, timeout=30)


def refused(srv: ServerProcess) -> float:
    return sum(
        metric(srv, "resnet_rejected_requests_total", model="resnet18", reason=reason)
        for reason in ("queue_full", "queue_timeout")
    )


def test_a_burst_after_a_trickle_is_judged_by_capacity_not_demand(srv: ServerProcess) -> None:
    before = refused(srv)
    # 1. Saturated: 16-image requests past their upload, 8 running at a time: a backlog. As
    # many requests (2 to 6) as this CPU drains in about a second of the 2 s timeout, from
    # one request timed alone (a 2-core AVX2-only EPYC runs ResNet18 fp32 at ~30 images/s).
    t0 = time.monotonic()
    assert post(srv, IMAGES[:16]).status_code == 200
    n = max(2, min(6, int(16 / (time.monotonic() - t0) / 16)))
    with ThreadPoolExecutor(n) as pool:
        saturating = list(pool.map(lambda _: post(srv, IMAGES[:16]), range(n)))
    assert [r.status_code for r in saturating] == [200] * n, [r.text for r in saturating]
    assert refused(srv) == before
    # 2. A trickle, with a slow upload holding the model in flight between its requests.
    body = IMAGES[0]
    with connect(srv) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:10]
        )
        assert wait_for(lambda: metric(srv, "resnet_images_in_flight", model="resnet18") == 1, 5)
        with srv.new_client() as c:
            for i in range(10):
                t0 = time.monotonic()
                r = c.post("/predict", content=IMAGES[i], headers={"content-type": "image/jpeg"})
                assert r.status_code == 200, r.text
                time.sleep(max(0.0, 0.25 - (time.monotonic() - t0)))
        # 3. The burst: 1 (uploading) + 32 - 8 = 25 images beyond the headroom.
        burst = post(srv, IMAGES)
        assert burst.status_code == 200, burst.text
        assert len(burst.json()["results"]) == 32
        assert refused(srv) == before
        sock.sendall(body[10:])
        held = read_response(sock)
    assert held.status == 200 and json.loads(held.body)["results"][0]["predictions"]
    assert wait_for(lambda: metric(srv, "resnet_images_in_flight", model="resnet18") == 0, 5)
