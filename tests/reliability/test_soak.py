"""Soak (opt-in: ``make soak``): 2 minutes of steady mixed load; memory must level off.

RSS is sampled every SAMPLE_S; after WARMUP_S a least-squares line is fitted to the samples
and its slope must stay under SLOPE_BOUND, the final RSS within FINAL_BOUND of the first
post-warm-up sample. Numbers from a run are in docs/RELIABILITY.md.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import start_server
from tests.imagegen import jpeg
from tests.reliability.helpers import metric

DURATION_S, WARMUP_S, SAMPLE_S = 120.0, 20.0, 3.0
SLOPE_BOUND = 1.0 * 2**20  # bytes per minute
FINAL_BOUND = 16 * 2**20


@pytest.mark.soak
def test_two_minutes_of_steady_load_do_not_grow_memory(model_dir: Path, tmp_path: Path) -> None:
    srv = start_server(model_dir, tmp_path, max_batch_size=8, warmup_batch_sizes="1,2,4,8")
    images = [jpeg(160 + 40 * i, 120 + 30 * i, seed=i) for i in range(8)]
    v2 = json.dumps(
        {
            "inputs": [
                {
                    "name": "image_bytes",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(images[0]).decode()],
                }
            ]
        }
    ).encode()
    stop = threading.Event()
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def load(worker: int) -> None:
        i = 0
        with srv.new_client() as c:
            while not stop.is_set():
                i += 1
                if i % 10 == 0:  # an error path now and then
                    r = c.post("/predict", content=b"junk", headers={"content-type": "image/jpeg"})
                elif i % 3 == 0:
                    r = c.post(
                        "/v2/models/resnet50/infer",
                        content=v2,
                        headers={"content-type": "application/json"},
                    )
                else:
                    files = [
                        ("file", ("a.jpg", images[(i + k) % 8], "image/jpeg"))
                        for k in range(1 + worker % 2)
                    ]
                    r = c.post("/predict?top_k=3", files=files)
                with lock:
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    workers = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    samples: list[tuple[float, int]] = []
    t0 = time.monotonic()
    try:
        for w in workers:
            w.start()
        while (t := time.monotonic() - t0) < DURATION_S:
            samples.append((t, srv.rss_bytes()))
            time.sleep(SAMPLE_S)
    finally:
        stop.set()
        for w in workers:
            w.join(60)
        assert metric(srv, "resnet_queue_depth", model="resnet18") == 0
        srv.stop()
    steady = [(t, rss) for t, rss in samples if t >= WARMUP_S]
    ts = np.array([t for t, _ in steady]) / 60
    rss = np.array([r for _, r in steady], dtype=np.float64)
    slope = float(np.polyfit(ts, rss, 1)[0])
    print(
        f"\nrequests {statuses}; RSS start {samples[0][1] / 2**20:.1f} MiB, after warm-up "
        f"{rss[0] / 2**20:.1f} MiB, final {rss[-1] / 2**20:.1f} MiB, max {rss.max() / 2**20:.1f}"
        f" MiB; slope {slope / 2**20:.3f} MiB/min over {len(steady)} samples"
    )
    assert set(statuses) == {200, 400}, statuses
    assert slope < SLOPE_BOUND
    assert rss[-1] - rss[0] < FINAL_BOUND
