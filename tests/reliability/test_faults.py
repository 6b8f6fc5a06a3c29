"""Faults inside the server and from clients, on a real server whose run function is wrapped
by tests/fault_server.py: a black image makes its batch raise, a white one holds the runner."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import ServerProcess, start_server
from tests.imagegen import encode, jpeg
from tests.reliability.helpers import (
    assert_error,
    connect,
    metric,
    read_response,
    readable,
    wait_for,
)

BLACK = encode(Image.new("RGB", (64, 64)), "PNG")
WHITE = encode(Image.new("RGB", (64, 64), (255, 255, 255)), "PNG")
PNG_CT = {"content-type": "image/png"}
JPEG_CT = {"content-type": "image/jpeg"}
SLOW_S = 1.5  # FAULT_SLOW_S: how long a white image holds the runner
BODY_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def srv(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAULT_SLOW_S", str(SLOW_S))
        s = start_server(
            model_dir,
            tmp_path_factory.mktemp("faults"),
            module="tests.fault_server",
            models="resnet18",
            batching="delay",
            max_queue_delay_ms=300,
            max_batch_size=4,
            warmup_batch_sizes="1,4",
            body_timeout_s=BODY_TIMEOUT_S,
        )
    yield s
    s.stop()


def count(srv: ServerProcess) -> float:
    return metric(srv, "resnet_inference_count_total", model="resnet18")


def depth(srv: ServerProcess) -> float:
    return metric(srv, "resnet_queue_depth", model="resnet18")


def post(srv: ServerProcess, data: bytes, ctype: dict[str, str] = PNG_CT) -> httpx.Response:
    with srv.new_client() as c:
        return c.post("/predict", content=data, headers=ctype, timeout=30)


def test_failing_batch_fails_only_its_requests_and_the_next_batch_succeeds(
    srv: ServerProcess,
) -> None:
    log_before = len(srv.log)
    failed_before = metric(srv, "resnet_requests_total", outcome="inference_failed")
    good = jpeg(300, 200, seed=1)
    # The delay policy (300 ms) puts these two in one batch: both fail, with the same body.
    with ThreadPoolExecutor(2) as pool:
        poisoned = list(pool.map(lambda d: post(srv, d), [BLACK, good]))
    for r in poisoned:
        assert_error(r, 500, "inference_failed")
        assert r.json() == {"error": "inference failed: RuntimeError", "code": "inference_failed"}
    # The next batch (and the one after) runs normally.
    for _ in range(2):
        r = post(srv, good, JPEG_CT)
        assert r.status_code == 200, r.text
    log = srv.log[log_before:]
    assert "Traceback" in log and "RuntimeError: poison image in batch" in log
    assert "batch of 2 rows failed" in log
    assert metric(srv, "resnet_requests_total", outcome="inference_failed") - failed_before == 2
    assert srv.client().get("/readyz").status_code == 200


def _raw_predict(body: bytes) -> bytes:
    return (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def _raw_v2(body: bytes) -> bytes:
    doc = json.dumps(
        {
            "inputs": [
                {
                    "name": "image_bytes",
                    "datatype": "BYTES",
                    "shape": [1],
                    "data": [base64.b64encode(body).decode()],
                }
            ]
        }
    ).encode()
    return (
        b"POST /v2/models/resnet18/infer HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(doc), doc)
    )


@pytest.mark.parametrize("raw_request", [_raw_predict, _raw_v2], ids=["predict", "v2"])
def test_client_gone_while_queued_frees_its_slot_and_is_never_run(
    srv: ServerProcess, raw_request: Callable[[bytes], bytes]
) -> None:
    before = count(srv)
    gone_before = metric(srv, "resnet_requests_total", outcome="client_disconnected")
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(post, srv, WHITE)  # holds the only runner for SLOW_S
        time.sleep(0.5)  # the white batch is running now (after the 300 ms batching delay)
        body = jpeg(256, 256, seed=7)
        with connect(srv) as sock:
            sock.sendall(raw_request(body))
            assert wait_for(lambda: depth(srv) == 1, 2), "the request must be queued"
        # The socket is closed while the request waits behind the slow batch.
        assert wait_for(lambda: depth(srv) == 0, 0.5), "a vanished client must free its slot"
        assert slow.result().status_code == 200
    time.sleep(0.5)  # anything (wrongly) still queued would have run by now
    assert count(srv) - before == 1, "only the slow request may have been inferred"
    assert wait_for(
        lambda: (
            metric(srv, "resnet_requests_total", outcome="client_disconnected") - gone_before == 1
        ),
        2,
    )
    assert post(srv, jpeg(), JPEG_CT).status_code == 200


def test_client_gone_mid_upload_costs_nothing(srv: ServerProcess) -> None:
    before, log_before = count(srv), len(srv.log)
    gone_before = metric(srv, "resnet_requests_total", outcome="client_disconnected")
    with connect(srv) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 100000\r\n\r\n" + jpeg()[:1000]
        )
        time.sleep(0.2)
    time.sleep(0.3)
    assert depth(srv) == 0 and count(srv) == before
    assert metric(srv, "resnet_requests_total", outcome="internal_error") == 0
    assert metric(srv, "resnet_requests_total", outcome="client_disconnected") - gone_before == 1
    assert "Traceback" not in srv.log[log_before:]
    assert post(srv, jpeg(), JPEG_CT).status_code == 200


@pytest.mark.parametrize("multipart", [False, True], ids=["raw", "multipart"])
def test_slow_client_is_cut_off_by_the_total_body_deadline(
    srv: ServerProcess, multipart: bool
) -> None:
    """1 byte every 100 ms never stalls 1 s between chunks, so only a deadline for the whole
    body stops it. Meanwhile a normal request is served promptly."""
    if multipart:
        head = b"Content-Type: multipart/form-data; boundary=xyz\r\n"
        body = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
        body += b"\x00" * 200
    else:
        head, body = b"Content-Type: image/jpeg\r\n", jpeg()[:200]
    with connect(srv) as sock, ThreadPoolExecutor(1) as pool:
        t0 = time.monotonic()
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\n"
            + head
            + b"Content-Length: %d\r\n\r\n" % len(body)
        )
        normal = None
        for i, byte in enumerate(body):
            if readable(sock):
                break
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            if i == 3:
                normal = pool.submit(lambda: (time.monotonic(), post(srv, jpeg(), JPEG_CT)))
            time.sleep(0.1)
        resp = read_response(sock)
        elapsed = time.monotonic() - t0
        assert normal is not None
        started, r = normal.result()
        assert r.status_code == 200 and time.monotonic() - started < BODY_TIMEOUT_S
    assert resp.status == 408, resp
    assert resp.headers["content-type"] == "application/json"
    assert resp.body == (b'{"error":"request body not received within 1 s","code":"body_timeout"}')
    assert BODY_TIMEOUT_S <= elapsed < BODY_TIMEOUT_S + 1.0
    assert srv.client().get("/readyz").status_code == 200
