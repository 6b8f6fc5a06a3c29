"""Readiness while loading and during shutdown; in-flight requests survive SIGTERM."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import broken_model_dir, start_server
from tests.imagegen import jpeg


def test_readiness_is_503_until_models_are_warm(model_dir: Path, tmp_path: Path) -> None:
    srv = start_server(
        model_dir,
        tmp_path,
        wait=False,
        models="resnet50",
        default_model="resnet50",
        warmup_batch_sizes="1,2,4,8,16",
    )
    try:
        seen: list[tuple[int, str]] = []
        predicted_while_loading = False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                r = httpx.get(srv.url + "/readyz", timeout=5)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            seen.append((r.status_code, r.text))
            if r.status_code == 200:
                break
            if not predicted_while_loading:
                p = httpx.post(
                    srv.url + "/predict",
                    content=jpeg(),
                    timeout=30,
                    headers={"content-type": "image/jpeg"},
                )
                if httpx.get(srv.url + "/readyz", timeout=5).status_code == 503:
                    # Still loading: a configured model answers 503 (retry), not 404.
                    assert p.status_code == 503, p.text
                    assert p.json()["code"] == "not_ready"
                    assert p.headers["retry-after"] == "1"
                    predicted_while_loading = True
            time.sleep(0.05)
        assert seen[-1][0] == 200
        not_ready = [body for code, body in seen if code == 503]
        assert not_ready, "readiness must be 503 while models load and warm up"
        assert '"code":"not_ready"' in not_ready[0] and "loading models" in not_ready[0]
        assert httpx.get(srv.url + "/healthz").status_code == 200
        assert predicted_while_loading
    finally:
        assert srv.stop() == 0


def test_sigterm_drains_in_flight_requests_and_exits_zero(model_dir: Path, tmp_path: Path) -> None:
    srv = start_server(
        model_dir,
        tmp_path,
        models="resnet50",
        default_model="resnet50",
        shutdown_delay_s=1.0,
        drain_timeout_s=20,
        max_batch_size=4,
        warmup_batch_sizes="1,4",
    )
    data = jpeg(640, 480)

    def send(_: int) -> int:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            return c.post(
                "/predict", content=data, headers={"content-type": "image/jpeg"}
            ).status_code

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(send, i) for i in range(12)]
        time.sleep(0.3)  # requests are queued / running now
        srv.proc.send_signal(signal.SIGTERM)
        t_signal = time.monotonic()
        r = httpx.get(srv.url + "/readyz", timeout=5)
        assert r.status_code == 503
        assert r.json() == {"error": "not ready: shutting down", "code": "not_ready"}
        assert r.headers["retry-after"] == "1"
        statuses = [f.result(timeout=60) for f in futures]
    assert statuses == [200] * 12, "every request accepted before SIGTERM must complete"
    assert srv.proc.wait(30) == 0
    srv.stop()
    assert time.monotonic() - t_signal < 25
    try:
        httpx.get(srv.url + "/healthz", timeout=2)
        raise AssertionError("server still accepting connections after exit")
    except httpx.ConnectError:
        pass
    assert "draining" in srv.log


def test_a_model_that_fails_to_load_stops_the_server(model_dir: Path, tmp_path: Path) -> None:
    """Like Triton by default: a broken model file is fatal, not a process that never gets ready."""
    srv = start_server(broken_model_dir(model_dir, tmp_path), tmp_path, wait=False)
    assert srv.exit_status(60) == 1
    assert "model load failed" in srv.log
    assert "exiting: model load failed" in srv.log
