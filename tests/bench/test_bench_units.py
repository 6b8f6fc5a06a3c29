"""Units of the benchmark that need no server: variant names and plans, thread grouping,
the agreement measures. Fast; no timing is asserted."""

from __future__ import annotations

import asyncio
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from bench import procs, routecost, targets, threads
from bench.variants import Variant, plan
from contract.cpuinfo import CpuInfo
from server.models.engines import openvino_installed

AVX2 = CpuInfo("AuthenticAMD", "AMD EPYC", frozenset({"avx2", "fma"}))
AMX = CpuInfo("GenuineIntel", "Xeon", frozenset({"avx512f", "amx_bf16", "amx_int8", "amx_tile"}))


def test_variant_names() -> None:
    v = Variant.parse("resnet50-int8@openvino")
    assert (v.arch, v.precision, v.key, v.label) == (
        "resnet50",
        "int8",
        "resnet50-int8@openvino",
        "resnet50 int8@openvino",
    )
    bf16 = Variant.parse("resnet18-bf16@openvino")
    assert bf16.precision == "bf16" and bf16.engine_precision == "bf16"
    assert bf16.path(Path("m")) == Path("m/resnet18.onnx")
    assert v.reference == Variant("resnet50", "cpu")
    with pytest.raises(ValueError, match="NAME@PROVIDER"):
        Variant.parse("resnet18")
    with pytest.raises(ValueError, match="NAME@PROVIDER"):
        Variant.parse("resnet18@tpu")


def _touch(d: Path, *names: str) -> Path:
    for n in names:
        (d / f"{n}.onnx").write_bytes(b"")
    return d


def test_default_plan_follows_the_files_and_the_cpu(tmp_path: Path) -> None:
    d = _touch(tmp_path, "resnet18", "resnet18-int8", "resnet50")
    p = plan(["resnet18", "resnet50"], d, AVX2)
    ov = openvino_installed()
    keys = [v.key for v in p.served]
    assert "resnet18@cpu" in keys and "resnet50@cpu" in keys
    assert not any("bf16" in k for k in keys + list(p.skipped))  # no bf16 units: not planned
    assert "no file resnet50-int8.onnx" in p.skipped["resnet50-int8@openvino"]
    assert "resnet18-int8@cpu" in [v.key for v in p.limits]  # the limits table only
    assert "resnet18-int8@cpu" not in keys
    assert ("resnet18-int8@openvino" in keys) is ov
    amx = plan(["resnet18"], d, AMX)
    assert ("resnet18-bf16@openvino" in [v.key for v in amx.served]) is ov
    quick = plan(["resnet18"], d, AVX2, quick=True)
    fast = ["resnet18-int8@openvino"] if ov else []
    assert [v.key for v in quick.served] == ["resnet18@cpu", *fast]


def test_explicit_variants_are_checked(tmp_path: Path) -> None:
    d = _touch(tmp_path, "resnet18")
    p = plan(
        ["resnet18"],
        d,
        AVX2,
        explicit=[Variant.parse("resnet18-bf16@openvino"), Variant.parse("resnet18@cpu")],
    )
    assert [v.key for v in p.served] == ["resnet18@cpu"]
    why = p.skipped["resnet18-bf16@openvino"]
    assert ("no bf16 units" if openvino_installed() else "OpenVINO") in why


def test_thread_groups() -> None:
    py = {10: "MainThread", 11: "preprocess_0", 12: "resnet18-int8-run0_0", 13: "AnyIO worker"}
    models = ["resnet18-int8"]
    assert threads.group_of(10, 10, "python", models, py) == threads.LOOP
    assert threads.group_of(10, 11, "preprocess_0", models, py) == threads.DECODE
    assert threads.group_of(10, 12, "resnet18-int8-r", models, py) == threads.RUNNER
    assert threads.group_of(10, 13, "AnyIO worker th", models, py) == threads.POOL
    assert threads.group_of(10, 14, "asyncio_0", models, py) == threads.RUNTIME  # native
    assert threads.group_of(10, 15, "libuv-worker", models, py) == threads.OTHER


def test_sample_sees_this_process_threads() -> None:
    import os

    done = threading.Event()
    t = threading.Thread(target=done.wait, name="bench-test")
    t.start()
    try:
        now = threads.sample(os.getpid())
    finally:
        done.set()
        t.join()
    assert os.getpid() in now and t.native_id in now
    assert now[os.getpid()].cpu_s > 0


def test_agreement_inputs_are_the_servers_crops() -> None:
    from bench.agreement import PHOTOS, inputs
    from contract.modelmeta import Preprocessing

    spec = Preprocessing(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    crops = inputs(spec, per_photo=2)
    assert crops.shape == (2 * len(PHOTOS), 224, 224, 3) and crops.dtype == np.uint8
    assert len({c.tobytes() for c in crops}) == len(crops)  # distinct views of each photo


class _Refusing(http.server.BaseHTTPRequestHandler):
    """Answers the first ``refusals`` POSTs with ``status`` (+ Retry-After unless None)."""

    refusals = 2
    status = 503
    retry_after: str | None = "0"
    seen = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        type(self).seen += 1
        refused = type(self).seen <= self.refusals
        self.send_response(self.status if refused else 200)
        if refused and self.retry_after is not None:
            self.send_header("retry-after", self.retry_after)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def _serve(handler: type[_Refusing]) -> tuple[http.server.HTTPServer, str]:
    srv = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/predict"


def test_first_request_waits_out_refusals_that_say_when() -> None:
    handler = type("H", (_Refusing,), {"seen": 0})
    srv, url = _serve(handler)
    try:
        targets.first_request(url, b"x", "image/jpeg", "server")
        assert handler.seen == 3  # two 503s with Retry-After, then the 200
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize(("status", "retry_after"), [(503, None), (500, "0"), (400, None)])
def test_first_request_fails_on_other_answers(status: int, retry_after: str | None) -> None:
    handler = type("H", (_Refusing,), {"seen": 0, "status": status, "retry_after": retry_after})
    srv, url = _serve(handler)
    try:
        with pytest.raises(RuntimeError, match=f"test request got {status}"):
            targets.first_request(url, b"x", "image/jpeg", "server")
        assert handler.seen == 1
    finally:
        srv.shutdown()
        srv.server_close()


def test_first_request_gives_up_at_its_deadline() -> None:
    handler = type("H", (_Refusing,), {"seen": 0, "refusals": 10**6})
    srv, url = _serve(handler)
    try:
        with pytest.raises(RuntimeError, match="test request got 503"):
            targets.first_request(url, b"x", "image/jpeg", "server", deadline_s=0.3)
        assert 2 <= handler.seen < 50
    finally:
        srv.shutdown()
        srv.server_close()


def test_free_port_never_repeats() -> None:
    ports = [procs.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def test_routecost_routes_all_answer_and_are_timed() -> None:
    res = asyncio.run(routecost.measure(calls=20, rounds=2))  # raises unless every call is a 200
    assert list(res) == ["fastapi", "fastapi-request", "direct", "starlette"]
    assert all(len(xs) == 2 and all(x > 0 for x in xs) for xs in res.values())
