"""The CPU image, built from the Dockerfile and run: checked from outside the container.

The image is built offline (WEIGHTS=random), so the models it serves are the seeded random
ones; the comparison that matters is with the same model files served outside the container.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import skimage.data
from docker_helpers import Image, localbuild, metric, start, wait_until

from contract.cpuinfo import read_cpuinfo
from tests.conftest import start_server

pytestmark = pytest.mark.slow

PHOTOS = Path(skimage.data.__file__).parent  # real photographs shipped with scikit-image
ROCKET = (PHOTOS / "rocket.jpg").read_bytes()  # JPEG, 427x640
CHELSEA = (PHOTOS / "chelsea.png").read_bytes()  # PNG, 451x300 (a cat)
UID = 10001


@pytest.fixture(scope="module")
def server(
    cpu_image: Image, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[localbuild.Container]:
    """The image run with its own settings (only the port chosen here)."""
    container = start(cpu_image.ref, tmp_path_factory.mktemp("cpu"))
    try:
        wait_until(container, lambda r: r.status_code == 200)
        yield container
    finally:
        container.remove()


def test_build_flags_random_weights_loudly(cpu_image: Image) -> None:
    if cpu_image.built is None:
        pytest.skip("image given, not built here")
    log = "\n".join(cpu_image.built.log)
    assert "!!! WEIGHTS=random: exporting SEEDED RANDOM weights (seed 0) into this image." in log
    assert "verify /models/resnet18.onnx: OK" in log and "verify /models/resnet50.onnx: OK" in log


def test_image_config(cpu_image: Image) -> None:
    cfg = localbuild.image_config(cpu_image.ref)
    assert cfg.user == f"{UID}:{UID}"
    assert cfg.entrypoint == ("python", "-m", "server")  # exec form: no shell between
    assert cfg.stop_signal == signal.SIGTERM
    assert cfg.exposed_ports == ("8000/tcp", "8001/tcp")  # REST, gRPC
    assert cfg.env["RESNET_GRPC_PORT"] == "8001"
    assert cfg.env["RESNET_PROVIDER"] == "auto" and cfg.env["RESNET_MODEL_DIR"] == "/models"


def test_ready_serving_both_models_on_cpu(server: localbuild.Container) -> None:
    assert httpx.get(server.url + "/readyz").json() == {"status": "ready"}
    body = httpx.get(server.url + "/models").json()
    models = {m["name"]: m for m in body["models"]}
    # The image serves on OpenVINO (provider auto), so bf16_variants=auto adds each fp32
    # file's bf16 variant where this CPU has the units; one below its floors (random weights
    # make ResNet50's pessimistic) is skipped with its reason, never fatal.
    bf16 = {"resnet18-bf16", "resnet50-bf16"} if read_cpuinfo().bf16 else set()
    skipped = {v["name"] for v in body["skipped_variants"]}
    assert skipped <= bf16 and all(v["reason"] == "agreement" for v in body["skipped_variants"])
    assert set(models) == {"resnet18", "resnet50"} | (bf16 - skipped)
    for m in models.values():
        assert (m["ready"], m["provider"], m["provider_fallback"]) == (True, "openvino", False)
        assert (m["weights"], m["random_weights"]) == ("random", True)
        assert m["precision"] == ("bf16" if m["name"].endswith("-bf16") else "fp32")


def test_predict_on_photos_equals_the_same_models_served_outside(
    server: localbuild.Container, tmp_path: Path
) -> None:
    # The image's own model files, served by this checkout's server outside any container.
    models = tmp_path / "models"
    models.mkdir()
    mount = localbuild.buildah("mount", server.cid).stdout.strip()
    try:
        for name in ("resnet18", "resnet50"):
            shutil.copyfile(f"{mount}/models/{name}.onnx", models / f"{name}.onnx")
    finally:
        localbuild.buildah("umount", server.cid)
    outside = start_server(models, tmp_path, provider="openvino")
    try:
        for model in ("resnet18", "resnet50"):
            for photo, kind in ((ROCKET, "image/jpeg"), (CHELSEA, "image/png")):
                answers = [
                    httpx.post(
                        f"{url}/predict/{model}?top_k=5",
                        content=photo,
                        headers={"content-type": kind},
                        timeout=60,
                    )
                    for url in (server.url, outside.url)
                ]
                assert [a.status_code for a in answers] == [200, 200], answers[0].text
                inside, there = (a.json() for a in answers)
                assert inside["model"] == model and inside["random_weights"] is True
                got, want = inside["results"][0]["predictions"], there["results"][0]["predictions"]
                assert len(got) == 5
                assert [(p["index"], p["label"]) for p in got] == [
                    (p["index"], p["label"]) for p in want
                ]
                for g, w in zip(got, want, strict=True):
                    assert math.isclose(
                        g["probability"], w["probability"], rel_tol=1e-4, abs_tol=1e-7
                    ), (model, kind, got, want)
    finally:
        outside.stop()


def test_metrics_count_what_was_served(server: localbuild.Container) -> None:
    def requests_ok() -> float:
        text = httpx.get(server.url + "/metrics").text
        return metric(
            text, "resnet_requests_total", model="resnet18", endpoint="predict", outcome="ok"
        )

    before = requests_ok()
    for _ in range(3):
        r = httpx.post(
            server.url + "/predict",
            content=ROCKET,
            headers={"content-type": "image/jpeg"},
            timeout=60,
        )
        assert r.status_code == 200 and r.json()["model"] == "resnet18"
    assert requests_ok() - before == 3
    text = httpx.get(server.url + "/metrics").text
    info = dict(model="resnet50", provider="openvino", fallback="false", random_weights="true")
    assert metric(text, "resnet_model_info", **info) == 1


def test_server_process_runs_as_the_non_root_user(server: localbuild.Container) -> None:
    status = Path(f"/proc/{server.server_pid()}/status").read_text().splitlines()
    ids = {line.split(":")[0]: line.split()[1:] for line in status if line[:4] in ("Uid:", "Gid:")}
    assert ids == {"Uid": [str(UID)] * 4, "Gid": [str(UID)] * 4}
    # The models belong to root and are read-only for the server's user.
    stat = server.exec(["stat", "-c", "%u:%g %a", "/models", "/models/resnet18.onnx"])
    assert stat.stdout.split("\n")[:2] == ["0:0 755", "0:0 644"], stat
    write = server.exec(["python", "-c", "open('/models/resnet18.onnx', 'ab')"])
    assert write.returncode != 0 and "PermissionError" in write.stderr


def test_healthcheck_command_succeeds_while_serving(server: localbuild.Container) -> None:
    check = server.healthcheck()
    assert check.returncode == 0, check


def test_sigterm_drains_accepted_requests_and_exits_zero(cpu_image: Image, tmp_path: Path) -> None:
    # shutdown_delay_s: keep answering (readiness 503) for 1 s after SIGTERM, as outside
    # Kubernetes (where preStop does it); without it the listener closes at once.
    container = start(
        cpu_image.ref,
        tmp_path,
        models="resnet50",
        default_model="resnet50",
        max_batch_size="4",
        warmup_batch_sizes="1,4",
        shutdown_delay_s="1",
    )
    try:
        wait_until(container, lambda r: r.status_code == 200)

        def send(_: int) -> httpx.Response:
            return httpx.post(
                container.url + "/predict",
                content=ROCKET,
                headers={"content-type": "image/jpeg"},
                timeout=120,
            )

        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(send, i) for i in range(12)]
            # Signal once requests are waiting in the batch queue: accepted, not yet answered.
            wait_until(
                container,
                lambda r: metric(r.text, "resnet_queue_depth", model="resnet50") >= 1,
                path="/metrics",
                timeout=60,
            )
            os.kill(container.server_pid(), signal.SIGTERM)
            t_signal = time.monotonic()
            ready = httpx.get(container.url + "/readyz", timeout=5)
            answers = [f.result(timeout=120) for f in futures]
        assert ready.status_code == 503
        assert ready.json() == {"error": "not ready: shutting down", "code": "not_ready"}
        assert [a.status_code for a in answers] == [200] * 12
        assert all(len(a.json()["results"][0]["predictions"]) == 5 for a in answers)
        assert container.proc is not None
        assert container.proc.wait(60) == 0
        assert time.monotonic() - t_signal < 25  # RESNET_DRAIN_TIMEOUT_S is 20 s
        assert "draining (readiness now 503)" in container.output()
        # The HEALTHCHECK fails once the server is gone: it is not a check that always passes.
        assert container.healthcheck().returncode != 0
    finally:
        container.remove()
