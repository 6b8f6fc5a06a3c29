"""Admission at the door: a per-model image budget taken before the body is read, memory in
flight bounded, and every refusal counted. On a real server with tests/fault_server.py (a
white image holds the runner for SLOW_S; a grey one gets NaN logits in its row)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import ServerProcess, start_server
from tests.imagegen import encode, jpeg
from tests.reliability.helpers import assert_error, connect, metric, read_response, wait_for

WHITE = encode(Image.new("RGB", (64, 64), (255, 255, 255)), "PNG")
GREY = encode(Image.new("RGB", (64, 64), (128, 128, 128)), "PNG")
SLOW_S = 1.5
BATCH, QUEUE = 2, 2
CAPACITY = QUEUE + BATCH  # one instance


@pytest.fixture(scope="module")
def srv(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAULT_SLOW_S", str(SLOW_S))
        s = start_server(
            model_dir,
            tmp_path_factory.mktemp("admission"),
            module="tests.fault_server",
            models="resnet18",
            batching="delay",
            max_queue_delay_ms=300,
            max_batch_size=BATCH,
            max_queue_size=QUEUE,
            warmup_batch_sizes="1,2",
            max_body_bytes_in_flight=200_000,
            max_body_bytes=150_000,  # bodies held half-sent: no minimum rate
            min_upload_bytes_per_s=0,
        )
    yield s
    s.stop()


def gauge(srv: ServerProcess, name: str) -> float:
    return metric(srv, name, model="resnet18")


def running(srv: ServerProcess) -> float:
    """Images admitted that are neither decoding nor queued: in a running batch."""
    return (
        gauge(srv, "resnet_images_in_flight")
        - gauge(srv, "resnet_decode_backlog")
        - gauge(srv, "resnet_queue_depth")
    )


def multipart(*images: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {f"f{i}": (f"{i}.png", im, "image/png") for i, im in enumerate(images)}


def headers_only(path: bytes, length: int, ctype: bytes = b"image/jpeg") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
        path,
        ctype,
        length,
    )


def post_files(srv: ServerProcess, *images: bytes) -> httpx.Response:
    with srv.new_client() as c:
        return c.post("/predict", files=multipart(*images), timeout=30)


def fill(srv: ServerProcess, pool: ThreadPoolExecutor) -> Future[httpx.Response]:
    """One request of CAPACITY white images: the whole budget, busy for 2 x SLOW_S."""
    fut = pool.submit(post_files, srv, *[WHITE] * CAPACITY)
    assert wait_for(lambda: gauge(srv, "resnet_images_in_flight") == CAPACITY, 5)
    return fut


@pytest.mark.parametrize("path", [b"/predict", b"/v2/models/resnet18/infer"], ids=["predict", "v2"])
def test_refused_before_its_body_is_read(srv: ServerProcess, path: bytes) -> None:
    refused = metric(srv, "resnet_rejected_requests_total", model="resnet18", reason="queue_full")
    with ThreadPoolExecutor(1) as pool:
        full = fill(srv, pool)
        with connect(srv) as sock:
            # Headers only: the server must answer without waiting for the 100 kB it announced.
            t0 = time.monotonic()
            sock.sendall(headers_only(path, 100_000))
            r = read_response(sock, timeout=5)
            took = time.monotonic() - t0
        assert r.status == 503 and r.headers["retry-after"] == "1"
        body = json.loads(r.body)
        assert body["code"] == "queue_full"
        assert body["error"] == (
            f"model 'resnet18' is at capacity: {CAPACITY} of {CAPACITY} images in flight "
            "(decoding, queued or running), 1 more asked; retry later"
        )
        assert took < SLOW_S, "answered at the door, not after the slow batch"
        assert full.result().status_code == 200
    after = metric(srv, "resnet_rejected_requests_total", model="resnet18", reason="queue_full")
    assert after - refused == 1
    assert wait_for(lambda: gauge(srv, "resnet_images_in_flight") == 0, 2)


def test_a_request_larger_than_the_room_left_is_refused_whole(srv: ServerProcess) -> None:
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post_files, srv, WHITE, WHITE)
        assert wait_for(lambda: gauge(srv, "resnet_images_in_flight") == 2, 5)
        r = srv.client().post("/predict", files=multipart(*[jpeg(seed=i) for i in range(3)]))
        assert_error(
            r, 503, "queue_full", "3 of 4 images in flight (decoding, queued or running), 2 more"
        )
        assert first.result().status_code == 200
    assert wait_for(lambda: gauge(srv, "resnet_images_in_flight") == 0, 2)


def test_decode_backlog_counts_a_body_still_arriving(srv: ServerProcess) -> None:
    data = jpeg(320, 240, seed=3)
    with connect(srv) as sock:
        sock.sendall(headers_only(b"/predict", len(data)) + data[:100])
        assert wait_for(lambda: gauge(srv, "resnet_decode_backlog") == 1, 3)
        assert gauge(srv, "resnet_images_in_flight") == 1
        assert gauge(srv, "resnet_queue_depth") == 0
        sock.sendall(data[100:])
        r = read_response(sock)
    assert r.status == 200, r.body
    assert json.loads(r.body)["results"][0]["predictions"]
    assert gauge(srv, "resnet_decode_backlog") == 0
    assert gauge(srv, "resnet_images_in_flight") == 0


def test_non_finite_logits_fail_only_their_own_request(srv: ServerProcess) -> None:
    failed = metric(srv, "resnet_requests_total", outcome="inference_failed")
    batches = metric(srv, "resnet_inference_exec_count_total", model="resnet18")
    green = encode(Image.new("RGB", (64, 64), (10, 200, 30)), "PNG")
    with ThreadPoolExecutor(3) as pool:
        # A white image holds the runner; the two behind it leave the queue as one full batch.
        white_f = pool.submit(post_files, srv, WHITE)
        assert wait_for(lambda: running(srv) == 1, 5)
        grey_f = pool.submit(post_files, srv, GREY)
        assert wait_for(lambda: gauge(srv, "resnet_queue_depth") == 1, 5)
        good = pool.submit(post_files, srv, green).result()
        grey, white = grey_f.result(), white_f.result()
    assert white.status_code == 200
    assert metric(srv, "resnet_inference_exec_count_total", model="resnet18") - batches == 2
    assert_error(grey, 500, "inference_failed")
    assert grey.json()["error"] == "inference failed: NonFiniteLogits"
    assert good.status_code == 200 and good.json()["results"][0]["timing"]["batch_size"] == 2
    assert metric(srv, "resnet_requests_total", outcome="inference_failed") - failed == 1
    assert "one item of a batch failed: model resnet18 produced non-finite logits" in srv.log


def test_body_bytes_in_flight_are_bounded_and_refusals_counted(srv: ServerProcess) -> None:
    """Two bodies of 120 kB cannot be held at once under a 200 kB budget: the second is
    refused at the door, by the limits middleware, and counted like any answer."""
    overloaded = metric(
        srv, "resnet_requests_total", model="resnet18", endpoint="predict", outcome="overloaded"
    )
    rejected = metric(srv, "resnet_rejected_requests_total", model="resnet18", reason="overloaded")
    with connect(srv) as slow:
        # 120 kB of a 130 kB body sent, the rest withheld: it holds the bytes it sent.
        slow.sendall(headers_only(b"/predict", 130_000) + b"\xff\xd8" + b"\0" * 119_998)
        assert wait_for(lambda: gauge(srv, "resnet_decode_backlog") == 1, 3)
        r = srv.client().post(
            "/predict/resnet18", content=b"\xff" * 120_000, headers={"content-type": "image/jpeg"}
        )
        assert_error(r, 503, "overloaded", "body bytes in flight (limit 200000)")
    # The slow request's reservation returns once the server has seen the socket close.
    assert wait_for(lambda: gauge(srv, "resnet_decode_backlog") == 0, 5)
    assert (
        metric(
            srv, "resnet_requests_total", model="resnet18", endpoint="predict", outcome="overloaded"
        )
        - overloaded
        == 1
    )
    assert (
        metric(srv, "resnet_rejected_requests_total", model="resnet18", reason="overloaded")
        - rejected
        == 1
    )
    # The reservation is returned: a body of the same size goes through now.
    r = srv.client().post(
        "/predict", content=jpeg(seed=4) + b"\0" * 100_000, headers={"content-type": "image/jpeg"}
    )
    assert r.status_code == 200, r.text


def test_a_slow_upload_holds_only_the_bytes_it_sent(srv: ServerProcess) -> None:
    """Declaring a large body reserves nothing: 13 sockets declaring 20 MiB at 1 B/s once
    exhausted the budget. Here one declares 130 kB of a 200 kB budget and sends 2 bytes; a
    120 kB body beside it is served."""
    with connect(srv) as slow:
        slow.sendall(headers_only(b"/predict", 130_000) + b"\xff\xd8")
        assert wait_for(lambda: gauge(srv, "resnet_decode_backlog") == 1, 3)
        r = srv.client().post(
            "/predict",
            content=jpeg(seed=5) + b"\0" * 100_000,
            headers={"content-type": "image/jpeg"},
        )
        assert r.status_code == 200, r.text


def test_v2_json_request_is_admitted_for_its_whole_batch(srv: ServerProcess) -> None:
    doc = {
        "inputs": [
            {
                "name": "image_bytes",
                "datatype": "BYTES",
                "shape": [2],
                "data": [base64.b64encode(jpeg(seed=i)).decode() for i in range(2)],
            }
        ]
    }
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post_files, srv, WHITE, WHITE, WHITE)
        assert wait_for(lambda: gauge(srv, "resnet_images_in_flight") == 3, 5)
        # Admitted for one image at the door (4 of 4), then it turns out to hold two.
        r = srv.client().post("/v2/models/resnet18/infer", json=doc)
        assert_error(
            r, 503, "queue_full", "4 of 4 images in flight (decoding, queued or running), 1 more"
        )
        assert first.result().status_code == 200
    r = srv.client().post("/v2/models/resnet18/infer", json=doc)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["shape"] == [2, 1000]


def test_unknown_model_refusals_do_not_make_new_series(srv: ServerProcess) -> None:
    with httpx.Client(base_url=srv.url) as c, connect(srv) as slow:
        slow.sendall(headers_only(b"/predict", 130_000) + b"\xff\xd8" + b"\0" * 119_998)
        assert wait_for(lambda: gauge(srv, "resnet_decode_backlog") == 1, 3)
        r = c.post(
            "/predict/no-such-model",
            content=b"\xff" * 120_000,
            headers={"content-type": "image/jpeg"},
        )
        assert_error(r, 503, "overloaded")
    assert metric(srv, "resnet_requests_total", model="_unknown", outcome="overloaded") >= 1
    assert "no-such-model" not in srv.client().get("/metrics").text
