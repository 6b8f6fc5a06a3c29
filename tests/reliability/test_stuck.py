"""Readiness sees a stuck pipeline (``stuck_after_s``): on a real server whose run function
tests/fault_server.py wraps, a white image holds the runner (and its cores) for SLOW_S."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ServerProcess, start_server
from tests.imagegen import encode
from tests.reliability.helpers import wait_for
from tests.reliability.test_faults import PNG_CT, WHITE, post

GREEN = encode(Image.new("RGB", (64, 64), (10, 200, 30)), "PNG")  # no fault: an ordinary run
SLOW_S = 5.0  # FAULT_SLOW_S
STUCK_AFTER_S = 1.0
STUCK = re.compile(
    r"not ready: stuck: 2 of 2 cores held and 0 decodes or batches waiting, none finished "
    r"for (\d+\.\d) s \(stuck_after_s 1\)"
)


@pytest.fixture(scope="module")
def srv(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAULT_SLOW_S", str(SLOW_S))
        s = start_server(
            model_dir,
            tmp_path_factory.mktemp("stuck"),
            module="tests.fault_server",
            models="resnet18",
            warmup_batch_sizes="1,4",
            cores=2,
            stuck_after_s=STUCK_AFTER_S,
        )
    yield s
    s.stop()


def test_idle_longer_than_stuck_after_s_is_ready(srv: ServerProcess) -> None:
    time.sleep(STUCK_AFTER_S * 1.5)
    assert srv.client().get("/readyz").json() == {"status": "ready"}
    r = post(srv, GREEN, PNG_CT)
    assert r.status_code == 200, r.text
    time.sleep(STUCK_AFTER_S * 1.5)  # the last work finished long ago: still not stuck
    assert srv.client().get("/readyz").json() == {"status": "ready"}


def test_readiness_503_while_the_runner_is_held_then_200_again(srv: ServerProcess) -> None:
    c = srv.client()
    with ThreadPoolExecutor(1) as ex:
        t0 = time.monotonic()
        held = ex.submit(post, srv, WHITE)
        assert wait_for(lambda: c.get("/readyz").status_code == 503, SLOW_S - 1), srv.log
        stuck_at = time.monotonic() - t0
        r = c.get("/readyz")
        body = r.json()
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert body["code"] == "not_ready" and set(body) == {"error", "code"}
        found = STUCK.fullmatch(body["error"])
        assert found, body
        assert STUCK_AFTER_S <= float(found[1]) < SLOW_S
        v2 = c.get("/v2/health/ready")
        assert v2.status_code == 503 and STUCK.fullmatch(v2.json()["error"]), v2.text
        assert c.get("/healthz").json() == {"status": "ok"}  # liveness unchanged
        assert c.get("/v2/health/live").status_code == 200
        assert held.result(timeout=30).status_code == 200
    assert STUCK_AFTER_S <= stuck_at < SLOW_S
    print(f"runner held {SLOW_S:g} s: readiness 503 {stuck_at:.2f} s after the request was sent")
    assert c.get("/readyz").json() == {"status": "ready"}
    assert c.get("/v2/health/ready").status_code == 200
    log = srv.log
    assert re.search(
        r"ERROR server\.http\.routes\.health: readiness 503: stuck: 2 of 2 cores held", log
    )
    assert "WARNING server.http.routes.health: readiness 200 again: work is finishing" in log
