"""The GPU image, built from the Dockerfile, checked as far as a machine without a GPU allows:
its onnxruntime offers CUDA, every CUDA/cuDNN library it needs resolves inside the image (all
but the driver's libcuda.so.1, which the NVIDIA Container Toolkit mounts), and its server,
started without a GPU, stays not ready and says why instead of serving on the CPU."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import skimage.data
from docker_helpers import Image, localbuild, metric, start, wait_until

pytestmark = pytest.mark.slow

DRIVER_LIBRARY = "libcuda.so.1"  # from the host's driver, mounted at run time
FALLBACK = "cuda was requested but the model runs on cpu (allow_cpu_fallback is off)"
ROCKET = (Path(skimage.data.__file__).parent / "rocket.jpg").read_bytes()  # a real photo


@pytest.fixture(scope="module")
def container(
    gpu_image: Image, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[localbuild.Container]:
    """A created container for commands (``buildah run``), no server running in it."""
    c = localbuild.Container(gpu_image.ref, port=0, log=tmp_path_factory.mktemp("gpu") / "log")
    c.create()
    try:
        yield c
    finally:
        c.remove()


def run(container: localbuild.Container, *argv: str) -> str:
    proc = container.exec(argv)
    assert proc.returncode == 0, proc
    return proc.stdout


def test_onnxruntime_offers_the_cuda_provider(container: localbuild.Container) -> None:
    out = run(
        container,
        "python",
        "-c",
        "import json, onnxruntime as o; "
        "print(json.dumps([o.__version__, o.get_device(), o.get_available_providers()]))",
    )
    version, device, providers = json.loads(out.strip().splitlines()[-1])
    assert version == localbuild.dockerfile_arg("ORT_GPU_VERSION")
    assert device == "GPU"
    assert "CUDAExecutionProvider" in providers


def test_cuda_and_cudnn_libraries_resolve_in_the_image(container: localbuild.Container) -> None:
    capi = run(
        container,
        "python",
        "-c",
        "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
    ).strip()
    provider = f"{capi}/capi/libonnxruntime_providers_cuda.so"
    ldd = run(container, "ldd", provider)
    missing = re.findall(r"^\s*(\S+) => not found", ldd, re.MULTILINE)
    assert missing == [DRIVER_LIBRARY], ldd
    for lib in ("libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10"):
        assert re.search(rf"{re.escape(lib)} => /opt/venv/\S+/nvidia/", ldd), (lib, ldd)
    # cuDNN is dlopen'ed by name at the first convolution: the loader's cache must know it,
    # and every cuDNN library must find its own dependencies.
    cache = run(container, "ldconfig", "-p")
    cudnn = re.findall(r"^\s*(libcudnn\S*\.so\.9) .*=> (\S+)$", cache, re.MULTILINE)
    assert "libcudnn.so.9" in dict(cudnn), cache
    assert len(cudnn) >= 8, cudnn  # the dispatcher + graph, ops, cnn, adv, engines, heuristic
    for _, path in cudnn:
        unresolved = re.findall(
            r"^\s*(\S+) => not found", run(container, "ldd", path), re.MULTILINE
        )
        assert set(unresolved) <= {DRIVER_LIBRARY}, (path, unresolved)


def test_server_without_gpu_is_not_ready_and_says_why(gpu_image: Image, tmp_path: Path) -> None:
    server = start(gpu_image.ref, tmp_path, warmup_batch_sizes="1")
    try:
        r = wait_until(server, lambda r: r.status_code == 503 and "loading" not in r.text)
        reasons = {"resnet18": FALLBACK, "resnet50": FALLBACK}
        assert r.json() == {"error": f"not ready: models not ready: {reasons}", "code": "not_ready"}
        predict = httpx.post(
            server.url + "/predict", content=ROCKET, headers={"content-type": "image/jpeg"}
        )
        assert predict.status_code == 503
        assert predict.json() == {
            "error": f"model 'resnet18' not ready: {FALLBACK}",
            "code": "not_ready",
        }
        for m in httpx.get(server.url + "/models").json()["models"]:
            assert (m["ready"], m["requested_provider"], m["provider"], m["provider_fallback"]) == (
                False,
                "cuda",
                "cpu",
                True,
            )
        text = httpx.get(server.url + "/metrics").text
        assert (
            metric(
                text,
                "resnet_model_info",
                model="resnet18",
                fallback="true",
                requested_provider="cuda",
                provider="cpu",
            )
            == 1
        )
        # The CUDA provider failed for want of the driver only: the CUDA libraries loaded.
        log = server.output()
        assert f"libonnxruntime_providers_cuda.so with error: {DRIVER_LIBRARY}" in log, log
        # Liveness is not readiness: the process is healthy, so the HEALTHCHECK passes.
        assert server.healthcheck().returncode == 0
        assert server.stop() == 0
    finally:
        server.remove()
