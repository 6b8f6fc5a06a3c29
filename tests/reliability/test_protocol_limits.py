"""Bounds on the request head, tried with raw sockets against a real server: too many headers,
too many header bytes (at once, or trickled), a head that never completes, a connection that
never sends a byte. Each gets its JSON error and a closed connection, costs the event loop
little, and ordinary requests are served meanwhile."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, start_server
from tests.imagegen import jpeg
from tests.reliability.helpers import connect, metric, read_response

MAX_HEADERS, MAX_HEAD_BYTES, HEAD_TIMEOUT_S = 20, 4096, 1.0


@pytest.fixture(scope="module")
def srv(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = start_server(
        model_dir,
        tmp_path_factory.mktemp("protocol"),
        models="resnet18",
        warmup_batch_sizes="1",
        max_headers=MAX_HEADERS,
        max_head_bytes=MAX_HEAD_BYTES,
        head_timeout_s=HEAD_TIMEOUT_S,
    )
    yield s
    s.stop()


def _closed(sock: socket.socket, timeout: float = 5) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def _refused(srv: ServerProcess, reason: str) -> float:
    return metric(srv, "resnet_connections_refused_total", reason=reason)


def test_too_many_headers_is_431(srv: ServerProcess) -> None:
    before = _refused(srv, "headers_too_large")
    with connect(srv) as sock:
        headers = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS + 5))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        r = read_response(sock)
        assert r.status == 431
        assert json.loads(r.body) == {
            "error": f"request has more than {MAX_HEADERS} headers",
            "code": "headers_too_large",
        }
        assert r.headers["connection"] == "close" and _closed(sock)
        assert _refused(srv, "headers_too_large") == before + 1


def test_a_head_over_its_byte_bound_is_431_even_trickled(srv: ServerProcess) -> None:
    with connect(srv) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        start, sent = time.monotonic(), 0
        try:
            while sent < 4 * MAX_HEAD_BYTES:  # 100-byte pieces: quadratic buffering if unbounded
                sock.sendall(b"a" * 100)
                sent += 100
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed by the server once past the bound: what this test wants
        r = read_response(sock)
        assert r.status == 431
        assert json.loads(r.body)["error"] == (
            f"request head exceeds {MAX_HEAD_BYTES} bytes (request line and headers)"
        )
        assert time.monotonic() - start < 5
        assert srv.client().get("/healthz").status_code == 200


def test_a_head_that_never_completes_is_closed_after_the_timeout(srv: ServerProcess) -> None:
    before = _refused(srv, "header_timeout")
    with connect(srv) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # and then nothing
        start = time.monotonic()
        r = read_response(sock, timeout=10)
        waited = time.monotonic() - start
        assert r.status == 408
        assert json.loads(r.body) == {
            "error": f"request head not received within {HEAD_TIMEOUT_S:g} s",
            "code": "header_timeout",
        }
        assert HEAD_TIMEOUT_S * 0.9 < waited < HEAD_TIMEOUT_S + 3
        assert _closed(sock)
        assert _refused(srv, "header_timeout") == before + 1


def test_a_connection_that_sends_nothing_is_closed(srv: ServerProcess) -> None:
    with connect(srv) as sock:
        start = time.monotonic()
        r = read_response(sock, timeout=10)
        assert r.status == 408 and json.loads(r.body)["code"] == "header_timeout"
        assert time.monotonic() - start < HEAD_TIMEOUT_S + 3 and _closed(sock)


def test_a_kept_alive_connection_gets_a_new_head_timer_per_request(srv: ServerProcess) -> None:
    with connect(srv) as sock:
        for _ in range(2):  # slower in total than one timeout, each head well inside it
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            time.sleep(HEAD_TIMEOUT_S * 0.6)
            sock.sendall(b"\r\n")
            r = read_response(sock)
            assert (r.status, json.loads(r.body)) == (200, {"status": "ok"})


def test_ordinary_requests_are_served_beside_hostile_heads(srv: ServerProcess) -> None:
    hostile = []
    for _ in range(50):  # half-open heads that hold connections until the timeout
        s = connect(srv)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        hostile.append(s)
    start = time.monotonic()
    assert srv.client().get("/healthz").status_code == 200
    assert time.monotonic() - start < 1.0
    for s in hostile:
        assert read_response(s, timeout=10).status == 408
        s.close()


def test_a_body_below_the_minimum_upload_rate_is_408(srv: ServerProcess) -> None:
    with connect(srv) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        start = time.monotonic()
        try:
            while not readable_within(sock, 0.2):  # 500 bytes/s, far below 16 KiB/s
                sock.sendall(b"\0" * 100)
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = read_response(sock)
        elapsed = time.monotonic() - start
    assert r.status == 408
    body = json.loads(r.body)
    assert body["code"] == "body_timeout"
    assert body["error"].startswith("request body arriving at ")
    assert body["error"].endswith("bytes/s, below the minimum of 16384 bytes/s")
    assert 2.0 <= elapsed < 5.0  # after the 2 s grace, long before the 10 s body timeout


def test_the_queue_deadline_counts_from_the_end_of_the_body(
    model_dir: Path, tmp_path: Path
) -> None:
    """An upload slower than the queue timeout (but above the minimum rate) is served: the
    upload is the client's time; before, it was read whole and refused queue_timeout."""
    srv = start_server(
        model_dir, tmp_path, models="resnet18", warmup_batch_sizes="1", queue_timeout_ms=500
    )
    try:
        data = jpeg(640, 480, seed=6) + b"\0" * 60_000
        with connect(srv) as sock:
            sock.sendall(
                b"POST /predict/resnet18 HTTP/1.1\r\nHost: x\r\nContent-Type: "
                b"image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data)
            )
            start = time.monotonic()
            for i in range(0, len(data), len(data) // 15 + 1):  # ~1.5 s for the whole body
                sock.sendall(data[i : i + len(data) // 15 + 1])
                time.sleep(0.1)
            r = read_response(sock)
        assert time.monotonic() - start > 1.0
        assert r.status == 200, r.body
        assert len(json.loads(r.body)["results"][0]["predictions"]) == 5
    finally:
        srv.stop()


def readable_within(sock: socket.socket, seconds: float) -> bool:
    return bool(select.select([sock], [], [], seconds)[0])
