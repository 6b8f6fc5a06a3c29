"""A real Prometheus (Debian's package) scrapes a real server; what it stores matches what was sent.

Needs ``prometheus`` and ``promtool`` on PATH (``make test`` installs them). In CI a missing
binary fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess, free_port, start_server
from tests.imagegen import jpeg


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} not installed (make test-tools installs it)")
        pytest.skip(f"{tool} not installed")
    return path


@pytest.fixture(scope="module")
def scraped(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, str]]:
    """A fresh server (exact counts) and a Prometheus scraping it every second."""
    prom = _need("prometheus")
    tmp = tmp_path_factory.mktemp("prom")
    srv = start_server(
        model_dir,
        tmp,
        models="resnet18",
        batching="delay",
        max_queue_delay_ms=40,
        max_batch_size=8,
        warmup_batch_sizes="1,8",
    )
    target = srv.url.removeprefix("http://")
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: resnet-server\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            prom,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield srv, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
        srv.stop()


def _query(prom: str, expr: str) -> float | None:
    try:
        r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5)
    except httpx.TransportError:
        return None
    result = r.json()["data"]["result"] if r.status_code == 200 else []
    return float(result[0]["value"][1]) if result else None


def _eventually(fn: Callable[[], float | None], want: float, timeout: float = 30) -> float | None:
    deadline, got = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        got = fn()
        if got == want:
            return got
        time.sleep(0.25)
    return got


def _direct(srv: ServerProcess, name: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(srv.client().get("/metrics").text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_prometheus_stores_the_requests_and_batches_sent(
    scraped: tuple[ServerProcess, str],
) -> None:
    srv, prom = scraped
    assert _eventually(lambda: _query(prom, 'up{job="resnet-server"}'), 1.0) == 1.0
    ok = 'resnet_requests_total{model="resnet18",endpoint="predict",outcome="ok"}'
    data, sent = jpeg(), 12

    def send(_: int) -> int:
        with srv.new_client() as c:
            return c.post(
                "/predict", content=data, headers={"content-type": "image/jpeg"}
            ).status_code

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(send, range(sent))) == [200] * sent
    bad = srv.client().post("/predict", content=b"junk", headers={"content-type": "image/png"})
    assert bad.status_code == 400

    assert _eventually(lambda: _query(prom, ok), float(sent)) == sent
    invalid = 'resnet_requests_total{model="resnet18",outcome="invalid_image"}'
    assert _eventually(lambda: _query(prom, invalid), 1.0) == 1.0
    execs = _direct(srv, "resnet_inference_exec_count_total", model="resnet18")
    assert 1 <= execs < sent, "6 concurrent clients with a 40 ms delay must batch"
    hist = 'resnet_batch_size_{}{{model="resnet18"}}'
    assert _eventually(lambda: _query(prom, hist.format("sum")), float(sent)) == sent
    assert _eventually(lambda: _query(prom, hist.format("count")), execs) == execs
    mean = _query(
        prom, "sum(resnet_inference_count_total) / sum(resnet_inference_exec_count_total)"
    )
    assert mean == pytest.approx(sent / execs)


def test_promtool_accepts_the_metrics_exposition(scraped: tuple[ServerProcess, str]) -> None:
    promtool = _need("promtool")
    text = scraped[0].client().get("/metrics").text
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr
