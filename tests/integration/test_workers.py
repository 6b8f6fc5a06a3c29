"""``workers`` > 1: several real server processes on one port, under one supervisor."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from server.restarts import GIVE_UP_MISSES
from server.scrape import SCRAPE_MAX_AGE_S
from tests.conftest import ServerProcess, broken_model_dir, start_server
from tests.imagegen import jpeg
from tests.integration.test_predict import direct_probs, metric
from tests.reliability.helpers import connect, read_response, wait_for
from tests.reliability.test_admission import headers_only

# A body held half-sent for seconds (the gauges test): no minimum upload rate.
WORKER_SETTINGS = {
    "workers": 2,
    "cores": 2,
    "models": "resnet18",
    "warmup_batch_sizes": "1,4",
    "min_upload_bytes_per_s": 0,
}


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
    return httpx.post(
        f"{srv.url}/predict/resnet18?top_k=5",
        content=data,
        headers={"content-type": "image/jpeg"},
        timeout=60,
    )


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
            s.value
            for f in families
            for s in f.samples
            if s.name == "resnet_requests_total" and s.labels.get("outcome") == "ok"
        )
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
            assert all(
                r.status_code == 200 for r in ex.map(lambda d: post_fresh(pool, d), images[:8])
            )
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
        time.sleep(SCRAPE_MAX_AGE_S)  # a worker's scrape read before the sample: reused that long
        for _ in range(6):  # sampled every 0.25 s: 0.3 s apart, each sees it
            time.sleep(0.3)
            assert fresh_scrape(pool, "resnet_decode_backlog") == 1
            assert fresh_scrape(pool, "resnet_images_in_flight") == 1
        sock.sendall(data[100:])
        r = read_response(sock)
    assert r.status == 200, r.body
    assert wait_for(lambda: fresh_scrape(pool, "resnet_images_in_flight") == 0, 5)
    time.sleep(SCRAPE_MAX_AGE_S)
    for _ in range(4):
        time.sleep(0.3)
        assert fresh_scrape(pool, "resnet_images_in_flight") == 0
        assert fresh_scrape(pool, "resnet_decode_backlog") == 0


def test_a_scrape_storm_reads_one_collection_a_second(pool: ServerProcess) -> None:
    """Each worker reuses a collection for SCRAPE_MAX_AGE_S: scrapes on one connection (one
    worker) within that time read the same values though requests were answered meanwhile;
    the next one after it reads them."""
    data = jpeg(320, 240, seed=7)
    for _ in range(5):  # a loaded box may take longer than the window: try again
        time.sleep(SCRAPE_MAX_AGE_S + 0.1)  # this connection's worker has nothing cached
        with pool.new_client() as one:
            t0 = time.monotonic()
            first = metric_in(one.get("/metrics").text)
            assert post_fresh(pool, data).status_code == 200
            storm = [metric_in(one.get("/metrics").text) for _ in range(20)]
            in_window = time.monotonic() - t0 < SCRAPE_MAX_AGE_S * 0.9
            time.sleep(SCRAPE_MAX_AGE_S)
            after = metric_in(one.get("/metrics").text)
        if in_window:
            assert storm == [first] * 20
            assert after == first + 1
            return
    pytest.fail("never managed 21 scrapes and a request within the window")


def metric_in(text: str) -> float:
    """resnet18's answered /predict requests in one exposition text."""
    found = re.search(
        r'^resnet_requests_total\{endpoint="predict",model="resnet18",'
        r'outcome="ok"\} (\S+)$',
        text,
        re.M,
    )
    return float(found[1]) if found else 0.0


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
    assert re.search(
        r"worker 0 died \(exit -9\) after [\d.]+ s ready: replacement in 1 s; "
        r"1 of 2 workers serving",
        pool.log,
    ), pool.log
    for _ in range(8):
        assert post_fresh(pool, data).status_code == 200
    assert ok_count(pool) == before + 16  # the dead worker's counts stay in the totals
    # Live gauges are sampled every 0.25 s and a scrape is reused for up to 1 s.
    assert wait_for(lambda: fresh_scrape(pool, "resnet_images_in_flight") == 0, 5)
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


def started_pids(srv: ServerProcess, worker: int) -> list[int]:
    """The pids of worker ``worker`` and its replacements, in the order the supervisor
    started them (from its log)."""
    return [int(p) for p in re.findall(rf"worker {worker} started \(pid (\d+)\)", srv.log)]


def next_worker(srv: ServerProcess, worker: int, known: int, timeout: float = 60) -> int:
    """Wait for the supervisor to start a worker ``worker`` after the first ``known``."""
    assert wait_for(lambda: len(started_pids(srv, worker)) > known, timeout), srv.log
    return started_pids(srv, worker)[known]


def gaps(srv: ServerProcess, worker: int) -> list[tuple[float, float]]:
    """For each replacement of ``worker``: (the backoff the supervisor announced, the seconds
    from that line to the replacement's start), from the log's timestamps."""
    stamp = r"^(\S+ \S+) INFO server.workers: "
    lines = re.findall(
        rf"^(\S+ \S+) ERROR server.workers: worker {worker} .*replacement in "
        rf"([\d.]+) s.*$|{stamp}worker {worker} (started) ",
        srv.log,
        re.M,
    )

    def at(text: str) -> float:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()

    out, announced = [], None
    for died_at, delay, started_at, started in lines:
        if delay:
            announced = (at(died_at), float(delay))
        elif started and announced is not None:
            out.append((announced[1], at(started_at) - announced[0]))
            announced = None
    return out


def test_repeated_kills_back_off_per_slot_while_the_others_serve(
    model_dir: Path, tmp_path: Path
) -> None:
    """Six SIGKILLs in well under a minute (the old supervisor stopped the server at the
    sixth): each slot's replacement waits its own backoff (1 s, then 2 s, 4 s... for deaths
    in a row), requests keep being answered by the other worker, and every slot comes back."""
    srv = start_server(model_dir, tmp_path, **WORKER_SETTINGS)
    try:
        assert wait_for(lambda: "all 2 workers ready in" in srv.log, 120), srv.log
        data, answered = jpeg(320, 240, seed=5), 0

        def serve_some() -> None:
            nonlocal answered
            for _ in range(4):
                r = post_fresh(srv, data)
                assert r.status_code == 200, r.text
                answered += 1

        t0 = time.monotonic()
        # Slot 1: killed once ready (1 s), its replacement killed while loading (2 s).
        # Slot 0 then: once ready (1 s), twice while loading (2 s, 4 s). Slot 1 once more.
        for worker, while_loading in ((1, 1), (0, 2), (1, 0)):
            known = len(started_pids(srv, worker))
            os.kill(started_pids(srv, worker)[-1], signal.SIGKILL)
            serve_some()
            for _ in range(while_loading):
                pid = next_worker(srv, worker, known)
                known += 1
                time.sleep(0.3)  # spawned, still importing and loading
                os.kill(pid, signal.SIGKILL)
                serve_some()
            next_worker(srv, worker, known)
            ready = ready_lines(srv, worker)
            assert wait_for(lambda w=worker, n=ready: ready_lines(srv, w) > n, 120), srv.log
            serve_some()
        assert time.monotonic() - t0 < 120  # six deaths: the old rule allowed five a minute
        assert srv.proc.poll() is None
        announced = [a for a, _ in gaps(srv, 0)], [a for a, _ in gaps(srv, 1)]
        assert announced == ([1.0, 2.0, 4.0], [1.0, 2.0, 4.0]), srv.log
        for delay, waited in gaps(srv, 0) + gaps(srv, 1):
            assert delay - 0.05 <= waited < delay + 3.0, (delay, waited)  # a loaded 2-core box
        print(
            f"backoff announced -> measured (s): {gaps(srv, 0) + gaps(srv, 1)}; six deaths "
            f"and three recoveries in {time.monotonic() - t0:.1f} s, {answered} requests 200"
        )
        assert "while loading (1 in a row without getting ready): replacement in 2 s" in srv.log
        assert "while loading (2 in a row without getting ready): replacement in 4 s" in srv.log
        assert answered == 4 * 6 + 4 * 3
        pids = list(workers_of(srv).values())
        assert len(pids) == 2
        while min(ok_by_worker(srv, pids).values()) == 0:  # both slots serve again
            serve_some()
        assert srv.client().get("/readyz").json() == {"status": "ready"}
    finally:
        srv.stop()


def test_when_no_worker_can_get_ready_the_server_stops(model_dir: Path, tmp_path: Path) -> None:
    """After the first start, workers whose models stop loading are retried with backoff;
    when every slot's last three failed and none serves, the server exits 1 saying so."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "resnet18.onnx").symlink_to(model_dir / "resnet18.onnx")
    srv = start_server(models, tmp_path, **WORKER_SETTINGS)
    try:
        assert wait_for(lambda: "all 2 workers ready in" in srv.log, 120), srv.log
        (models / "resnet18.onnx").unlink()
        (models / "resnet18.onnx").write_bytes(b"no longer an ONNX file")
        for pid in workers_of(srv).values():
            os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        status = srv.proc.wait(120)
        took = time.monotonic() - t0
    finally:
        srv.stop()
    assert status == 1, srv.log
    print(f"every worker killed, loads failing: exit 1 after {took:.1f} s")
    # Each slot: 1 s after the kill, then three load failures 2 s and 4 s apart.
    assert 7 <= took < 100, took
    log = srv.log
    for worker in (0, 1):
        assert [a for a, _ in gaps(srv, worker)] == [1.0, 2.0, 4.0], log
        assert re.search(
            rf"worker {worker} could not load or ready its models \(exit 4\) "
            r"while loading \(1 in a row without getting ready\): replacement in "
            r"2 s; 0 of 2 workers serving",
            log,
        ), log
    assert (
        len(
            re.findall(
                r"no worker can serve \(none ready, each of the 2 slots' last workers "
                r"failed to get ready\): stopping the server",
                log,
            )
        )
        == 1
    )
    assert log.count("could not load or ready its models (exit 4)") == 2 * GIVE_UP_MISSES
    assert "model load failed" in log
