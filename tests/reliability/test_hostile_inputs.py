"""The hostile-input corpus (tests/reliability/corpus.py) against one real server process:
every case gets its exact answer, never a 5xx or a hang; afterwards the server is healthy,
its memory is bounded and its answers are unchanged."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, start_server
from tests.imagegen import jpeg
from tests.reliability.corpus import Case, all_cases
from tests.reliability.helpers import assert_error, connect, metric, read_response, readable

MAX_BODY = 8 * 1024 * 1024
RSS_BOUND = 150 * 1024 * 1024  # after the corpus, vs. after warm-up; measured ~40 MiB
CASES = all_cases()


@pytest.fixture(scope="module")
def srv(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = start_server(
        model_dir,
        tmp_path_factory.mktemp("hostile"),
        max_body_bytes=MAX_BODY,
        max_batch_size=8,
        warmup_batch_sizes="1,8",
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def before(srv: ServerProcess) -> dict[str, object]:
    """The reference answer and the RSS after a few normal requests (warm allocator)."""
    c = srv.client()
    for seed in range(5):
        c.post(
            "/predict", content=jpeg(400, 300, seed=seed), headers={"content-type": "image/jpeg"}
        )
    r = c.post(
        "/predict?top_k=10", content=jpeg(320, 240, seed=99), headers={"content-type": "image/jpeg"}
    )
    assert r.status_code == 200
    return {"predictions": r.json()["results"][0]["predictions"], "rss": srv.rss_bytes()}


def test_corpus_is_large_and_generated() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_corpus_case(srv: ServerProcess, before: dict[str, object], case: Case) -> None:
    # Each request has a client timeout: a hang is a failure, not a stuck suite.
    r = srv.client().request(
        case.method,
        case.path,
        content=case.content,
        headers=case.headers,
        files=case.files,
        timeout=30,
    )
    if case.status == 200:
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        if case.path.startswith("/predict"):
            assert len(r.json()["results"][0]["predictions"]) == 5
    else:
        assert_error(r, case.status, case.code, case.fragment)
    assert srv.client().get("/readyz", timeout=5).status_code == 200


def test_body_over_limit_declared_is_refused_before_reading(srv: ServerProcess) -> None:
    with connect(srv) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1)
        )
        resp = read_response(sock)  # answered without a single body byte sent
    assert resp.status == 413
    assert json.loads(resp.body) == {
        "error": f"request body exceeds the limit of {MAX_BODY} bytes",
        "code": "body_too_large",
    }


def test_huge_chunked_body_is_cut_off_without_buffering(srv: ServerProcess) -> None:
    """64 MiB streamed chunked (no Content-Length): 413 once the limit is passed, and the
    server's memory does not grow by anything like the body size."""
    rss0 = srv.rss_bytes()
    chunk = b"\xff" * (256 * 1024)
    sent, total = 0, 64 * 1024 * 1024
    with connect(srv) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        try:
            while sent < total and not readable(sock):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = read_response(sock)
    assert resp.status == 413, resp
    assert json.loads(resp.body)["code"] == "body_too_large"
    assert MAX_BODY <= sent < total, "the server must answer as soon as the limit is passed"
    assert srv.rss_bytes() - rss0 < MAX_BODY, "the body must not be buffered whole"
    assert srv.client().get("/readyz").status_code == 200


def test_after_the_corpus_server_is_healthy_and_unchanged(
    srv: ServerProcess, before: dict[str, object]
) -> None:
    c = srv.client()
    assert c.get("/readyz").json() == {"status": "ready"}
    assert metric(srv, "resnet_queue_depth", model="resnet18") == 0
    t0 = time.monotonic()
    r = c.post(
        "/predict?top_k=10", content=jpeg(320, 240, seed=99), headers={"content-type": "image/jpeg"}
    )
    assert r.status_code == 200 and time.monotonic() - t0 < 5
    assert r.json()["results"][0]["predictions"] == before["predictions"]
    grown = srv.rss_bytes() - int(before["rss"])  # type: ignore[call-overload]
    print(f"RSS growth over the corpus: {grown / 2**20:.1f} MiB")
    assert grown < RSS_BOUND
    assert metric(srv, "resnet_requests_total", outcome="internal_error") == 0
    assert metric(srv, "resnet_requests_total", outcome="inference_failed") == 0
    assert "Traceback" not in srv.log


def test_no_server_header_or_version_anywhere(srv: ServerProcess) -> None:
    c = srv.client()
    for method, path in [
        ("GET", "/healthz"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("GET", "/metrics"),
        ("GET", "/nope"),
        ("POST", "/predict"),
        ("GET", "/v2"),
        ("DELETE", "/predict"),
    ]:
        r = c.request(method, path)
        assert "server" not in r.headers, (path, r.headers)
        assert "x-powered-by" not in r.headers
        assert not any("uvicorn" in v.lower() for v in r.headers.values()), r.headers
    assert_error(c.get("/nope"), 404, "not_found")
    assert_error(c.delete("/predict"), 405, "method_not_allowed")


def test_client_timeouts_fire_on_a_stuck_server_never_on_this_one(srv: ServerProcess) -> None:
    # Guard for the suite itself: the shared client has a finite timeout.
    assert srv.client().timeout.read is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get("http://127.0.0.1:9/healthz", timeout=1)
