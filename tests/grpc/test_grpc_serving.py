"""The gRPC service sharing the REST server's machinery, on real servers: the API key,
admission and its retry information, deadlines and cancellation (a cancelled call's rows are
never run), message-size limits, gRPC and REST requests in the same batches, several workers
on one port, and the drain (health NOT_SERVING first).

The fault-injecting launcher (tests/fault_server.py) holds the runner for ``SLOW_S`` on a white
image and fails the batch of a black one."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import ServerProcess, start_server
from tests.grpc.helpers import assert_rpc_error, client, images_input, raw_images_request, stub
from tests.v2 import helpers as v2
from tests.v2.helpers import random_images

SLOW_S = 2.0
KEY = "s3cret-grpc-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
WHITE = np.full((1, 224, 224, 3), 255, dtype=np.uint8)
BLACK = np.zeros((1, 224, 224, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def slow(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One image per batch, four queued at most, 1.2 s from admission to dispatch, an API key."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAULT_SLOW_S", str(SLOW_S))
        s = start_server(
            model_dir,
            tmp_path_factory.mktemp("grpc-slow"),
            module="tests.fault_server",
            models="resnet18",
            batching="eager",
            max_batch_size=1,
            max_queue_size=4,
            queue_timeout_ms=1200,
            warmup_batch_sizes="1",
            api_key=KEY,
            grpc_max_message_bytes=200_000,
        )
    yield s
    s.stop()


def count(srv: ServerProcess, name: str, **labels: str) -> float:
    return v2.metric(srv, name, model="resnet18", **labels)


def idle(srv: ServerProcess, timeout: float = 15) -> None:
    """Wait until nothing is in flight (the previous test's slow batch is done)."""
    deadline = time.monotonic() + timeout
    while count(srv, "resnet_images_in_flight") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count(srv, "resnet_images_in_flight") == 0


def start_slow_batch(c: tgrpc.InferenceServerClient) -> threading.Event:
    """A white image holding the one runner for SLOW_S; the event is set when it answered."""
    done = threading.Event()
    c.async_infer(
        "resnet18", [images_input(WHITE)], callback=lambda result, error: done.set(), headers=AUTH
    )
    return done


def wait_running(srv: ServerProcess) -> None:
    deadline = time.monotonic() + 5
    while count(srv, "resnet_images_in_flight") - count(srv, "resnet_queue_depth") < 1:
        assert time.monotonic() < deadline, "the slow batch never started"
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        (None, False),
        ({"authorization": "Bearer wrong"}, False),
        ({"x-api-key": "wrong"}, False),
        (AUTH, True),
        ({"authorization": f"bearer {KEY}"}, True),
        ({"x-api-key": KEY}, True),
    ],
)
def test_api_key(slow: ServerProcess, headers: dict[str, str] | None, ok: bool) -> None:
    idle(slow)
    c = client(slow)
    before = count(slow, "resnet_requests_total", endpoint="grpc_infer", outcome="unauthorized")
    x = random_images(1, seed=3)
    if ok:
        got = c.infer("resnet18", [images_input(x)], headers=headers).as_numpy("logits")
        assert got.shape == (1, 1000)
    else:
        with pytest.raises(InferenceServerException) as info:
            c.infer("resnet18", [images_input(x)], headers=headers)
        assert_rpc_error(
            info,
            "UNAUTHENTICATED",
            "missing or invalid API key (send 'Authorization: Bearer <key>')",
        )
    after = count(slow, "resnet_requests_total", endpoint="grpc_infer", outcome="unauthorized")
    assert after - before == (0 if ok else 1)
    # Metadata, health and readiness need no key, as over REST.
    assert c.is_server_ready() and c.get_model_metadata("resnet18").name == "resnet18"
    c.close()


def test_cancelled_calls_are_not_run(slow: ServerProcess) -> None:
    idle(slow)
    c = client(slow)
    runs, images = (
        count(slow, "resnet_inference_exec_count_total"),
        count(slow, "resnet_inference_count_total"),
    )
    gone = count(
        slow, "resnet_requests_total", endpoint="grpc_infer", outcome="client_disconnected"
    )
    done = start_slow_batch(c)
    wait_running(slow)
    errors: list[InferenceServerException] = []
    calls = [
        c.async_infer(
            "resnet18",
            [images_input(random_images(1, seed=i))],
            callback=lambda result, error: errors.append(error),
            headers=AUTH,
        )
        for i in range(3)
    ]
    deadline = time.monotonic() + 5
    while count(slow, "resnet_queue_depth") < 3:
        assert time.monotonic() < deadline, "the calls never queued"
        time.sleep(0.02)
    for call in calls:
        call.cancel()
    deadline = time.monotonic() + 5
    while count(slow, "resnet_queue_depth") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert count(slow, "resnet_queue_depth") == 0  # they left the queue before the runner freed
    assert done.wait(SLOW_S + 5)
    idle(slow)
    # Only the slow batch ran; the three cancelled calls cost no inference.
    assert count(slow, "resnet_inference_exec_count_total") - runs == 1
    assert count(slow, "resnet_inference_count_total") - images == 1
    assert (
        count(slow, "resnet_requests_total", endpoint="grpc_infer", outcome="client_disconnected")
        - gone
        == 3
    )
    assert [e.status() for e in errors] == ["StatusCode.CANCELLED"] * 3
    c.close()


def test_deadline_cuts_the_request_and_its_work(slow: ServerProcess) -> None:
    idle(slow)
    c = client(slow)
    runs = count(slow, "resnet_inference_exec_count_total")
    done = start_slow_batch(c)
    wait_running(slow)
    start = time.monotonic()
    with pytest.raises(InferenceServerException) as info:
        c.infer("resnet18", [images_input(random_images(1))], headers=AUTH, client_timeout=0.4)
    assert time.monotonic() - start < 1.0  # the client's 0.4 s, not the queue's 1.2 s
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert done.wait(SLOW_S + 5)
    idle(slow)
    assert count(slow, "resnet_inference_exec_count_total") - runs == 1
    c.close()


def test_queue_timeout_is_unavailable_with_retry_after(slow: ServerProcess) -> None:
    idle(slow)
    c = client(slow)
    done = start_slow_batch(c)
    wait_running(slow)
    channel, s = stub(slow)
    with channel, pytest.raises(grpc.RpcError) as info:
        s.ModelInfer(
            raw_images_request("resnet18", random_images(1)),
            metadata=tuple(AUTH.items()),
            timeout=10,
        )
    err = info.value
    assert (err.code(), err.details()) == (
        grpc.StatusCode.UNAVAILABLE,
        "not run within its deadline (queue_timeout 1.2 s); dropped",
    )
    assert ("retry-after", "1") in tuple(err.trailing_metadata())
    assert done.wait(SLOW_S + 5)
    c.close()


def test_queue_full_is_resource_exhausted_with_retry_after(slow: ServerProcess) -> None:
    idle(slow)
    c = client(slow)
    done = start_slow_batch(c)
    wait_running(slow)
    queued = [
        c.async_infer(
            "resnet18",
            [images_input(random_images(1, seed=i))],
            callback=lambda result, error: None,
            headers=AUTH,
        )
        for i in range(4)
    ]
    deadline = time.monotonic() + 5
    while count(slow, "resnet_images_in_flight") < 5:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    full = count(slow, "resnet_rejected_requests_total", reason="queue_full")
    channel, s = stub(slow)
    with channel, pytest.raises(grpc.RpcError) as info:
        s.ModelInfer(
            raw_images_request("resnet18", random_images(1)),
            metadata=tuple(AUTH.items()),
            timeout=10,
        )
    err = info.value
    assert (err.code(), err.details()) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "model 'resnet18' is at capacity: 5 of 5 images in flight (decoding, queued or running), "
        "1 more asked; retry later",
    )
    assert {("retry-after", "1"), ("grpc-retry-pushback-ms", "1000")} <= set(
        err.trailing_metadata()
    )
    assert count(slow, "resnet_rejected_requests_total", reason="queue_full") - full == 1
    for call in queued:
        call.cancel()
    assert done.wait(SLOW_S + 5)
    c.close()


def test_failed_batch_is_internal(slow: ServerProcess) -> None:
    idle(slow)
    c = client(slow)
    with pytest.raises(InferenceServerException) as info:
        c.infer("resnet18", [images_input(BLACK)], headers=AUTH)
    assert_rpc_error(info, "INTERNAL", "inference failed: RuntimeError")
    assert c.is_server_ready()
    c.close()


def test_message_size_limit(slow: ServerProcess) -> None:
    """``grpc_max_message_bytes`` (200 000 here): two images (301 056 bytes of pixels) are
    refused by grpc before the servicer sees them."""
    c = client(slow)
    with pytest.raises(InferenceServerException) as info:
        c.infer("resnet18", [images_input(random_images(2))], headers=AUTH)
    assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "Received message larger than max" in info.value.message()
    assert "vs. 200000)" in info.value.message()
    c.close()


@pytest.fixture(scope="module")
def batching(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = start_server(
        model_dir,
        tmp_path_factory.mktemp("grpc-batching"),
        models="resnet18",
        batching="delay",
        max_queue_delay_ms=400,
        max_batch_size=8,
        warmup_batch_sizes="1,8",
        max_concurrent_requests=4,
    )
    yield s
    s.stop()


def test_grpc_and_rest_requests_share_batches(batching: ServerProcess, model_dir: Path) -> None:
    """Four gRPC and four REST single-image requests at once: they run in at most two
    batches, one of at least five rows, so holding both protocols' images; each answer is
    its own image's logits."""
    images = [random_images(1, seed=200 + i) for i in range(8)]
    execs = count(batching, "resnet_inference_exec_count_total")
    sizes = {b: count(batching, "resnet_batch_size_bucket", le=f"{b}.0") for b in range(1, 9)}
    barrier = threading.Barrier(8)

    def over_grpc(x: np.ndarray) -> np.ndarray:
        c = client(batching)
        barrier.wait()
        out: np.ndarray = c.infer("resnet18", [images_input(x)]).as_numpy("logits")
        c.close()
        return out

    def over_rest(x: np.ndarray) -> np.ndarray:
        c = v2.client(batching)
        barrier.wait()
        out: np.ndarray = c.infer("resnet18", [v2.images_input(x)]).as_numpy("logits")
        c.close()
        return out

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(over_grpc if i % 2 else over_rest, x) for i, x in enumerate(images)]
        answers = [f.result(timeout=60) for f in futures]
    for x, got in zip(images, answers, strict=True):
        np.testing.assert_allclose(got, v2.direct_logits(model_dir, "resnet18", x), atol=1e-5)
    runs = count(batching, "resnet_inference_exec_count_total") - execs
    assert 1 <= runs <= 2
    grew = {b: count(batching, "resnet_batch_size_bucket", le=f"{b}.0") - sizes[b] for b in sizes}
    largest = min(b for b, n in grew.items() if n == runs)  # cumulative buckets
    assert largest >= 5, grew


def test_inference_calls_beyond_max_concurrent_requests(batching: ServerProcess) -> None:
    """Four calls wait out the 400 ms batching delay; a fifth meanwhile is refused, and a
    health check is not."""
    c = client(batching)
    busy = count(batching, "resnet_rejected_requests_total", reason="overloaded")
    results: list[InferenceServerException | None] = []
    for i in range(4):
        c.async_infer(
            "resnet18",
            [images_input(random_images(1, seed=i))],
            callback=lambda result, error: results.append(error),
        )
    deadline = time.monotonic() + 5
    while count(batching, "resnet_queue_depth") < 4:
        assert time.monotonic() < deadline, "the four calls never queued"
        time.sleep(0.01)
    channel, s = stub(batching)
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            s.ModelInfer(raw_images_request("resnet18", random_images(1)), timeout=10)
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    err = info.value
    assert (err.code(), err.details()) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "server busy: 4 gRPC inference calls in flight",
    )
    assert ("retry-after", "1") in tuple(err.trailing_metadata())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert count(batching, "resnet_rejected_requests_total", reason="overloaded") - busy == 1
    deadline = time.monotonic() + 10
    while len(results) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert results == [None] * 4
    c.close()


def test_workers_share_the_grpc_port_and_drain(model_dir: Path, tmp_path: Path) -> None:
    """Two workers bind the one gRPC port (SO_REUSEPORT) and both answer; on SIGTERM health
    turns NOT_SERVING during shutdown_delay_s while calls are still answered."""
    srv = start_server(
        model_dir,
        tmp_path,
        models="resnet18",
        workers=2,
        cores=2,
        intra_op_threads=1,
        shutdown_delay_s=3,
    )
    try:
        # Readiness is the first worker's; the second loads before it serves (load_first),
        # which under a loaded machine takes seconds more.
        deadline = time.monotonic() + 60
        while srv.log.count("gRPC listening on") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        x = random_images(1, seed=7)
        expected = v2.direct_logits(model_dir, "resnet18", x)
        for _ in range(6):  # fresh connections: the kernel spreads them over the workers
            c = client(srv)
            np.testing.assert_allclose(
                c.infer("resnet18", [images_input(x)]).as_numpy("logits"), expected, atol=1e-5
            )
            c.close()
        pids = {
            line.split("[")[1].split("]")[0]
            for line in srv.log.splitlines()
            if "Started server process" in line
        }
        assert len(pids) >= 2, srv.log
        assert srv.log.count("gRPC listening on") == 2, srv.log
        channel = grpc.insecure_channel(srv.grpc_url)
        health = health_pb2_grpc.HealthStub(channel)
        ask = health_pb2.HealthCheckRequest(service="")
        assert health.Check(ask, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        srv.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 2
        while health.Check(ask, timeout=5).status == health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "health still SERVING after SIGTERM"
            time.sleep(0.05)
        c = client(srv)
        assert not c.is_server_ready()
        got = c.infer("resnet18", [images_input(x)]).as_numpy("logits")  # still answered
        np.testing.assert_allclose(got, expected, atol=1e-5)
        c.close()
        channel.close()
        assert srv.proc.wait(30) == 0
        assert "gRPC draining" in srv.log
    finally:
        srv.stop()


def listening_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on (its socket inodes matched in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_grpc_port_zero_turns_grpc_off(model_dir: Path, tmp_path: Path) -> None:
    srv = start_server(model_dir, tmp_path, models="resnet18", grpc_port=0)
    try:
        assert srv.client().get("/readyz").json() == {"status": "ready"}
        assert "gRPC listening" not in srv.log
        assert listening_ports(srv.proc.pid) == {int(srv.url.rsplit(":", 1)[1])}
    finally:
        srv.stop()


def test_grpc_listens_beside_rest(slow: ServerProcess) -> None:
    assert listening_ports(slow.proc.pid) == {int(slow.url.rsplit(":", 1)[1]), slow.grpc_port}


def test_a_taken_grpc_port_fails_the_start(
    slow: ServerProcess, model_dir: Path, tmp_path: Path
) -> None:
    """One worker: no SO_REUSEPORT, so the port of another server is not silently shared."""
    srv = start_server(model_dir, tmp_path, models="resnet18", grpc_port=slow.grpc_port, wait=False)
    assert srv.exit_status(60) != 0
    assert f"gRPC: cannot listen on 127.0.0.1:{slow.grpc_port}" in srv.log, srv.log


def test_loading_is_not_serving_and_unavailable(model_dir: Path, tmp_path: Path) -> None:
    """gRPC answers from the start of the lifespan, while resnet50 loads and warms up at every
    batch size up to 32 (seconds on two cores): NOT_SERVING, not ready, and inference
    UNAVAILABLE with retry-after; then SERVING."""
    srv = start_server(model_dir, tmp_path, models="resnet50", wait=False)
    try:
        channel = grpc.insecure_channel(srv.grpc_url)
        grpc.channel_ready_future(channel).result(timeout=60)
        health = health_pb2_grpc.HealthStub(channel)
        ask = health_pb2.HealthCheckRequest(service="")
        assert health.Check(ask, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
        c = client(srv)
        assert not c.is_server_ready()
        with pytest.raises(grpc.RpcError) as info:
            stub(srv)[1].ModelInfer(raw_images_request("resnet50", random_images(1)), timeout=10)
        err = info.value
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert err.details() in {
            "model 'resnet50' is loading",
            "model 'resnet50' not ready: loading",
        }, err.details()
        assert ("retry-after", "1") in tuple(err.trailing_metadata())
        srv.wait_ready()
        assert health.Check(ask, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        assert c.is_server_ready() and c.is_model_ready("resnet50")
        c.close()
        channel.close()
    finally:
        srv.stop()
