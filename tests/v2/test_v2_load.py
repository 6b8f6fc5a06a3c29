"""A short closed-loop load through tritonclient's ``async_infer``: no errors, every result
correct. Prints throughput and latency (``pytest tests/v2/test_v2_load.py -s``); the numbers
in docs/V2_PROTOCOL.md come from here."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton

from contract.images.preprocess import preprocess
from contract.modelmeta import parse_metadata
from tests.conftest import ServerProcess
from tests.imagegen import jpeg
from tests.v2.helpers import bytes_input, client, direct_logits, images_input, random_images

REQUESTS = 96


@pytest.mark.slow
@pytest.mark.parametrize("concurrency", [4, 16])
@pytest.mark.parametrize("kind", ["tensor", "jpeg"])
def test_async_infer_load(
    server: ServerProcess, model_dir: Path, kind: str, concurrency: int
) -> None:
    # 8 distinct single-image requests, reused round-robin; references computed locally.
    if kind == "tensor":
        data = [random_images(1, seed=i) for i in range(8)]
        inputs = [[images_input(x)] for x in data]
        expected = [direct_logits(model_dir, "resnet18", x)[0] for x in data]
    else:
        props = ort.InferenceSession(str(model_dir / "resnet18.onnx")).get_modelmeta()
        spec = parse_metadata(props.custom_metadata_map).preprocessing
        encoded = [jpeg(400, 300, seed=i) for i in range(8)]
        inputs = [[bytes_input([e])] for e in encoded]
        expected = [
            direct_logits(model_dir, "resnet18", preprocess(e, spec)[np.newaxis])[0]
            for e in encoded
        ]
    tc = client(server, concurrency=concurrency)
    latencies: list[float] = []
    in_flight: deque[tuple[int, float, triton.InferAsyncRequest]] = deque()
    start = time.monotonic()
    try:
        for i in range(REQUESTS):
            if len(in_flight) == concurrency:
                _collect(in_flight.popleft(), expected, latencies)
            in_flight.append((i % 8, time.monotonic(), tc.async_infer("resnet18", inputs[i % 8])))
        while in_flight:
            _collect(in_flight.popleft(), expected, latencies)
    finally:
        tc.close()
    elapsed = time.monotonic() - start
    ms = np.array(latencies) * 1000
    print(
        f"\nv2 load {kind:6s} concurrency={concurrency:2d}: {REQUESTS} requests in "
        f"{elapsed:.2f} s = {REQUESTS / elapsed:.1f} req/s; latency p50 "
        f"{np.percentile(ms, 50):.0f} ms, p95 {np.percentile(ms, 95):.0f} ms, "
        f"max {ms.max():.0f} ms"
    )
    assert len(latencies) == REQUESTS


def _collect(
    entry: tuple[int, float, triton.InferAsyncRequest],
    expected: list[np.ndarray],
    latencies: list[float],
) -> None:
    index, sent, request = entry
    logits = request.get_result().as_numpy("logits")[0]
    latencies.append(time.monotonic() - sent)
    np.testing.assert_allclose(logits, expected[index], atol=1e-5)
