"""What the server exposes: optional API-key auth on inference (both ways), open health and
metrics, and the limits table in README matching the settings' real defaults."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.settings import Settings
from tests.conftest import ROOT, ServerProcess, start_server
from tests.imagegen import jpeg
from tests.reliability.helpers import assert_error, metric

KEY = "s3cret-key-for-tests"
JPEG = jpeg(200, 150, seed=2)
V2_BODY = json.dumps(
    {
        "inputs": [
            {
                "name": "image_bytes",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(JPEG).decode()],
            }
        ]
    }
).encode()
INFER = [
    ("/predict", JPEG, "image/jpeg"),
    ("/predict/resnet18", JPEG, "image/jpeg"),
    ("/v2/models/resnet18/infer", V2_BODY, "application/json"),
    ("/v2/models/resnet18/versions/1/infer", V2_BODY, "application/json"),
]
UNAUTHORIZED = "missing or invalid API key (send 'Authorization: Bearer <key>')"


@pytest.fixture(scope="module")
def srv(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = start_server(
        model_dir,
        tmp_path_factory.mktemp("auth"),
        models="resnet18",
        api_key=KEY,
        max_batch_size=4,
        warmup_batch_sizes="1",
    )
    yield s
    s.stop()


@pytest.mark.parametrize(("path", "body", "ctype"), INFER)
@pytest.mark.parametrize(
    "auth",
    [{}, {"authorization": "Bearer wrong"}, {"x-api-key": "wrong"}, {"authorization": KEY},
     {"authorization": f"Basic {KEY}"}, {"x-api-key": KEY[:-1]}, {"authorization": "Bearer"}],
    ids=["none", "bearer-wrong", "header-wrong", "no-scheme", "basic", "prefix", "empty"],
)  # fmt: skip
def test_inference_needs_the_key(
    srv: ServerProcess, path: str, body: bytes, ctype: str, auth: dict[str, str]
) -> None:
    r = srv.client().post(path, content=body, headers={"content-type": ctype, **auth})
    assert_error(r, 401, "unauthorized", UNAUTHORIZED)
    assert KEY not in r.text


def test_answers_before_the_route_are_counted_too(srv: ServerProcess) -> None:
    """A missing key (a dependency) and a malformed query (FastAPI's validation) are answered
    before the route body, which counts everything else: they are counted all the same."""
    labels = {"model": "resnet18", "endpoint": "predict"}
    before_401 = metric(srv, "resnet_requests_total", outcome="unauthorized", **labels)
    before_422 = metric(srv, "resnet_requests_total", outcome="invalid_parameter", **labels)
    r = srv.client().post("/predict/resnet18", content=JPEG, headers={"content-type": "image/jpeg"})
    assert_error(r, 401, "unauthorized")
    r = srv.client().post(
        "/predict/resnet18?top_k=abc",
        content=JPEG,
        headers={"content-type": "image/jpeg", "x-api-key": KEY},
    )
    assert_error(r, 422, "invalid_parameter", "top_k")
    assert metric(srv, "resnet_requests_total", outcome="unauthorized", **labels) == before_401 + 1
    assert (
        metric(srv, "resnet_requests_total", outcome="invalid_parameter", **labels)
        == before_422 + 1
    )


@pytest.mark.parametrize(("path", "body", "ctype"), INFER)
@pytest.mark.parametrize(
    "auth", [{"authorization": f"Bearer {KEY}"}, {"authorization": f"bearer  {KEY}"},
             {"x-api-key": KEY}], ids=["bearer", "bearer-lowercase", "x-api-key"],
)  # fmt: skip
def test_inference_with_the_key(
    srv: ServerProcess, path: str, body: bytes, ctype: str, auth: dict[str, str]
) -> None:
    r = srv.client().post(path, content=body, headers={"content-type": ctype, **auth})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/metrics", "/models", "/v2", "/v2/health/ready",
             "/v2/models/resnet18", "/openapi.json"],
)  # fmt: skip
def test_health_metrics_and_metadata_stay_open(srv: ServerProcess, path: str) -> None:
    r = srv.client().get(path)
    assert r.status_code == 200, r.text
    assert KEY not in r.text
    assert "server" not in r.headers


def test_interactive_docs_are_off_by_default(srv: ServerProcess) -> None:
    for path in ("/docs", "/redoc"):
        assert_error(srv.client().get(path), 404, "not_found")
    assert "/predict" in srv.client().get("/openapi.json").json()["paths"]


def test_auth_is_off_by_default() -> None:
    assert Settings(model_dir=ROOT).api_key is None


def test_readme_limits_table_matches_the_settings() -> None:
    """Every limit is a setting, documented once in README with its real default."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("Limits (safe defaults", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", table, re.M))
    defaults = Settings(model_dir=ROOT)
    expected = {
        "max_body_bytes": ("20 MiB", 20 * 1024 * 1024),
        "max_image_pixels": ("40,000,000", 40_000_000),
        "max_images_per_request": ("32", 32),
        "max_top_k": ("1000", 1000),
        "max_queue_size": ("128 images per model", 128),
        "queue_timeout_ms": ("10000", 10_000),
        "max_concurrent_requests": ("512", 512),
        "max_body_bytes_in_flight": ("256 MiB", 256 * 1024 * 1024),
        "body_timeout_s": ("10", 10),
        "min_upload_bytes_per_s": ("16384", 16 * 1024),
        "max_json_body_bytes": ("8 MiB", 8 * 1024 * 1024),
        "decode_cpu_base_ms": ("250", 250),
        "decode_cpu_ms_per_mpixel": ("50", 50),
        "decode_memory_bytes": ("1 GiB", 1 << 30),
        "max_jpeg_scans": ("100", 100),
        "max_headers": ("100", 100),
        "max_head_bytes": ("32 KiB", 32 * 1024),
        "head_timeout_s": ("10", 10),
        "max_connections": ("2048", 2048),
    }
    assert set(rows) == set(expected)
    for name, (text, value) in expected.items():
        assert rows[name].strip() == text, name
        assert getattr(defaults, name) == value, name


@pytest.mark.parametrize("key", ["", "   ", "short-key"])
def test_an_empty_or_short_key_refuses_to_start(model_dir: Path, tmp_path: Path, key: str) -> None:
    # Fail closed: RESNET_API_KEY="" (an unset secret in a manifest) must not mean "no auth".
    srv = start_server(model_dir, tmp_path, wait=False, api_key=key)
    assert srv.exit_status(60) == 1
    assert (
        "invalid settings:\n  api_key: Value error, api_key must be at least 16 characters "
        f"(got {len(key.strip())}); unset it to serve without a key" in srv.log
    ), srv.log


def test_serving_without_a_key_beyond_loopback_is_warned(model_dir: Path, tmp_path: Path) -> None:
    srv = start_server(
        model_dir, tmp_path, models="resnet18", host="0.0.0.0", warmup_batch_sizes="1"
    )
    try:
        assert (
            "WARNING server: serving without an API key on 0.0.0.0: anyone who can reach port"
            in srv.log
        ), srv.log
    finally:
        srv.stop()
    quiet = start_server(model_dir, tmp_path, models="resnet18", warmup_batch_sizes="1")
    try:
        assert "serving without an API key" not in quiet.log  # 127.0.0.1: loopback only
    finally:
        quiet.stop()
