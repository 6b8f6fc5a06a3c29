"""``workers`` > 1: several real server processes on one port, under one supervisor."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from tests.conftest import ServerProcess, broken_model_dir, start_server
from tests.imagegen import jpeg
from tests.integration.test_predict import direct_probs, metric
from tests.reliability.helpers import connect, read_response, wait_for
from tests.reliability.test_admission import headers_only

WORKER_SETTINGS = {"workers": 2, "cores": 2, "models": "resnet18", "warmup_batch_sizes": "1,4"}


def workers_of(srv: ServerProcess) -> dict[str, int]:
    """``{"worker-0": pid, ...}``: the supervisor's live children, by their OS name."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == srv.proc.pid and comm.startswith("worker-") and state != "Z":
            found[comm] = int(entry.name)
    return found


def ready_lines(srv: ServerProcess, worker: int) -> int:
    return len(re.findall(rf"\[worker {worker}\]: ready: serving", srv.log))


def post_fresh(srv: ServerProcess, data: bytes) -> httpx.Response:
    """One request on a new connection: the kernel picks the worker that accepts it."""
    return httpx.post(f"{srv.url}/predict/resnet18?top_k=5", content=data,
                      headers={"content-type": "image/jpeg"}, timeout=60)  # fmt: skip


def fresh_scrape(srv: ServerProcess, name: str, **labels: str) -> float:
    """``name`` of model resnet18 (summed over other labels) from a scrape on a new
    connection, so any worker may answer it."""
    srv.client().close()
    srv._client = None
    return metric(srv, name, model="resnet18", **labels)


def ok_count(srv: ServerProcess) -> float:
    return fresh_scrape(srv, "resnet_requests_total", endpoint="predict", outcome="ok")


def metrics_dir(srv: ServerProcess) -> Path:
    """The supervisor's multiprocess metrics directory, as it logged it."""
    found = re.search(r"metrics in (\S+)", srv.log)
    assert found, srv.log
    return Path(found[1])


@pytest.fixture(scope="module")
def pool(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(model_dir, tmp_path_factory.mktemp("workers"), **WORKER_SETTINGS)
    try:
        # Worker 1 accepts only once loaded; wait for it so both serve from the first request.
        assert wait_for(lambda: ready_lines(srv, 1) == 1, 120), "worker 1 ready: not in time"
        yield srv
    finally:
        srv.stop()


def ok_by_worker(srv: ServerProcess, pids: list[int]) -> dict[int, float]:
    """Each worker's own count of answered /predict requests, from its file in the
    supervisor's metrics directory (what every scrape adds up)."""
    out = {}
    for pid in pids:
        path = metrics_dir(srv) / f"counter_{pid}.db"
        families = MultiProcessCollector.merge([str(path)]) if path.exists() else []
        out[pid] = sum(
            s.value for f in families for s in f.samples
            if s.name == "resnet_requests_total" and s.labels.get("outcome") == "ok"
        )  # fmt: skip
    return out


def test_every_worker_answers_like_one_server_and_metrics_add_up(
    pool: ServerProcess, model_dir: Path
) -> None:
    workers = workers_of(pool)
    assert sorted(workers) == ["worker-0", "worker-1"]
    assert "2 workers on 127.0.0.1" in pool.log and "1 cores each" in pool.log
    images = [jpeg(320, 240, seed=i) for i in range(16)]
    with ThreadPoolExecutor(4) as ex:
        answers = list(ex.map(lambda d: post_fresh(pool, d), images))
    for data, r in zip(images, answers, strict=True):
        assert r.status_code == 200, r.text
        probs = direct_probs(model_dir, "resnet18", data)
        expected = np.argsort(-probs, kind="stable")[:5]
        preds = r.json()["results"][0]["predictions"]
        assert [p["index"] for p in preds] == expected.tolist()
        np.testing.assert_allclose([p["probability"] for p in preds], probs[expected], atol=1e-5)
    # The kernel picks the worker per connection: go on until both have answered some.
    sent, pids = 16, list(workers.values())
    while min(ok_by_worker(pool, pids).values()) == 0 and sent < 256:
        with ThreadPoolExecutor(4) as ex:
            assert all(r.status_code == 200 for r in ex.map(lambda d: post_fresh(pool, d),
                                                            images[:8]))  # fmt: skip
        sent += 8
    per_worker = ok_by_worker(pool, pids)
    assert min(per_worker.values()) > 0 and sum(per_worker.values()) == sent, per_worker
    # Each scrape may reach either worker; each reports both workers' requests.
    for _ in range(6):
        assert ok_count(pool) == sent
        assert fresh_scrape(pool, "resnet_inference_count_total") == sent
    info = pool.client().get("/metrics").text
    assert info.count("resnet_model_info{") == 1  # both workers serve the same file: one series
    stats = pool.client().get("/v2/models/resnet18/stats").json()["model_stats"][0]
    assert stats["inference_count"] == sent and stats["inference_stats"]["success"]["count"] == sent


def test_live_gauges_reach_every_workers_scrape(pool: ServerProcess) -> None:
    """A body still arriving at one worker shows in the gauges whichever worker is scraped."""
    data = jpeg(320, 240, seed=3)
    with connect(pool) as sock:
        sock.sendall(headers_only(b"/predict/resnet18", len(data)) + data[:100])
        assert wait_for(lambda: fresh_scrape(pool, "resnet_decode_backlog") == 1, 5)
        for _ in range(6):  # sampled every 0.25 s: 0.3 s apart, each sees it
            time.sleep(0.3)
            assert fresh_scrape(pool, "resnet_decode_backlog") == 1
            assert fresh_scrape(pool, "resnet_images_in_flight") == 1
        sock.sendall(data[100:])
        r = read_response(sock)
    assert r.status == 200, r.body
    assert wait_for(lambda: fresh_scrape(pool, "resnet_images_in_flight") == 0, 5)
    for _ in range(4):
        time.sleep(0.3)
        assert fresh_scrape(pool, "resnet_images_in_flight") == 0
        assert fresh_scrape(pool, "resnet_decode_backlog") == 0


def test_a_killed_worker_is_replaced_and_nothing_is_lost(pool: ServerProcess) -> None:
    before = ok_count(pool)
    victim = workers_of(pool)["worker-0"]
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: workers_of(pool).get("worker-0") != victim, 60), (
        "worker 0 reaped: not in time"
    )
    data = jpeg(320, 240, seed=99)
    # Worker 1 serves meanwhile: the replacement accepts only once its model is loaded.
    for _ in range(8):
        r = post_fresh(pool, data)
        assert r.status_code == 200, r.text
    assert wait_for(lambda: ready_lines(pool, 0) == 2, 120), "the replacement ready: not in time"
    replacement = workers_of(pool)["worker-0"]
    assert replacement != victim
    assert "worker 0 died (exit -9): starting a replacement" in pool.log
    for _ in range(8):
        assert post_fresh(pool, data).status_code == 200
    assert ok_count(pool) == before + 16  # the dead worker's counts stay in the totals
    assert fresh_scrape(pool, "resnet_images_in_flight") == 0
    assert pool.client().get("/readyz").status_code == 200


def test_sigterm_stops_every_worker_and_removes_the_metrics(
    model_dir: Path, tmp_path: Path
) -> None:
    srv = start_server(model_dir, tmp_path, **WORKER_SETTINGS)
    assert wait_for(lambda: ready_lines(srv, 1) == 1, 120), "worker 1 ready: not in time"
    pids = workers_of(srv).values()
    directory = metrics_dir(srv)
    assert directory.is_dir()
    assert srv.stop() == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not directory.exists()
    assert "worker 0 exited (0)" in srv.log and "worker 1 exited (0)" in srv.log


def test_a_worker_that_cannot_load_stops_the_server(model_dir: Path, tmp_path: Path) -> None:
    settings = {**WORKER_SETTINGS, "models": ""}
    srv = start_server(broken_model_dir(model_dir, tmp_path), tmp_path, wait=False, **settings)
    assert srv.exit_status(90) == 1
    assert "could not load or ready its models: stopping the server" in srv.log
    assert "model load failed" in srv.log


def test_workers_that_load_but_are_not_ready_stop_the_server(
    model_dir: Path, tmp_path: Path
) -> None:
    # Readiness must not depend on the worker a connection reaches: one worker not ready
    # (CUDA asked, no GPU here, fallback refused) stops the server.
    settings = {**WORKER_SETTINGS, "provider": "cuda", "allow_cpu_fallback": "false"}
    srv = start_server(model_dir, tmp_path, wait=False, **settings)
    assert srv.exit_status(90) == 1
    assert "models loaded but NOT ready: this worker stops the server" in srv.log
    assert "could not load or ready its models: stopping the server" in srv.log
