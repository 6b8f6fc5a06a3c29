"""Raw v2 protocol edge cases over plain HTTP: every malformed request gets a 4xx with a
message naming what was expected and received, and the server stays healthy."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import ServerProcess, start_server
from tests.imagegen import jpeg
from tests.v2.helpers import direct_logits, metric, random_images

INFER = "/v2/models/resnet18/infer"
IMAGE = [1, 224, 224, 3]
PIXELS = 224 * 224 * 3


def binary_body(header: dict, *chunks: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + b"".join(chunks), {"Inference-Header-Content-Length": str(len(head))}


def images(shape: list[int], datatype: str = "UINT8", **fields: object) -> dict:
    return {"inputs": [{"name": "images", "shape": shape, "datatype": datatype, **fields}]}


def binary_images(size: int, shape: list[int] = IMAGE) -> dict:
    return images(shape, parameters={"binary_data_size": size})


def assert_healthy(srv: ServerProcess) -> None:
    assert srv.client().get("/v2/health/ready").status_code == 200


def test_health_endpoints_have_empty_bodies(server: ServerProcess) -> None:
    c = server.client()
    for path in (
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/resnet18/ready",
        "/v2/models/resnet18/versions/1/ready",
    ):
        r = c.get(path)
        assert (r.status_code, r.content) == (200, b""), path


def test_binary_request_and_response_layout(server: ServerProcess, model_dir: Path) -> None:
    x = random_images(2, seed=9)
    body, headers = binary_body(
        {
            "id": "a1",
            "inputs": [
                {
                    "name": "images",
                    "shape": [2, 224, 224, 3],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        },
        x.tobytes(),
    )
    r = server.client().post(INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    assert head == {
        "model_name": "resnet18",
        "model_version": "1",
        "id": "a1",
        "outputs": [
            {
                "name": "logits",
                "datatype": "FP32",
                "shape": [2, 1000],
                "parameters": {"binary_data_size": 8000},
            }
        ],
    }
    got = np.frombuffer(r.content[n:], "<f4").reshape(2, 1000)
    np.testing.assert_allclose(got, direct_logits(model_dir, "resnet18", x), atol=1e-5)


def test_json_response_by_default_and_nested_json_input(
    server: ServerProcess, model_dir: Path
) -> None:
    x = random_images(1, seed=4)
    r = server.client().post(INFER, json=images(IMAGE, data=x.tolist()))  # nested [1,224,224,3]
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in r.headers
    (out,) = r.json()["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("logits", "FP32", [1, 1000])
    np.testing.assert_allclose(
        np.array(out["data"]).reshape(1, 1000), direct_logits(model_dir, "resnet18", x), atol=1e-5
    )


def test_binary_data_output_applies_to_unlisted_outputs(server: ServerProcess) -> None:
    body = images(IMAGE, data=[7] * PIXELS)
    body["parameters"] = {"binary_data_output": True}
    r = server.client().post(INFER, json=body)
    assert r.status_code == 200, r.text
    assert int(r.headers["inference-header-content-length"]) + 4000 == len(r.content)


def test_base64_image_in_json(server: ServerProcess) -> None:
    data = base64.b64encode(jpeg(300, 200, seed=2)).decode()
    r = server.client().post(
        INFER,
        json={
            "inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [data]}],
            "outputs": [{"name": "logits", "parameters": {"classification": 2}}],
        },
    )
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["datatype"] == "BYTES" and out["shape"] == [1, 2]
    score, index, _label = out["data"][0].split(":", 2)
    assert float(score) and 0 <= int(index) < 1000


def _bytes_body(*elements: bytes, shape: list[int]) -> tuple[bytes, dict[str, str]]:
    raw = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    header = {
        "inputs": [
            {
                "name": "image_bytes",
                "shape": shape,
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(raw)},
            }
        ]
    }
    return binary_body(header, raw)


DEEP = b'{"inputs":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
DEEP_DATA = (
    b'{"inputs":[{"name":"images","shape":[1,224,224,3],"datatype":"UINT8","data":'
    + b"[" * 500
    + b"1"
    + b"]" * 500
    + b"}]}"
)


@pytest.mark.parametrize(
    ("path", "make", "status", "fragment"),
    [
        # binary framing
        (INFER, lambda: binary_body(binary_images(PIXELS), b"\0" * 100), 400,
         "binary data of input 'images' is truncated: binary_data_size is 150528 bytes but "
         "only 100 bytes follow"),
        (INFER, lambda: binary_body(binary_images(PIXELS), b"\0" * (PIXELS + 3)), 400,
         "body has 3 bytes after the JSON header and binary inputs (expected 150528 bytes of "
         "binary data, got 150531)"),
        (INFER, lambda: (b'{"inputs": []}', {"Inference-Header-Content-Length": "5000"}), 400,
         "Inference-Header-Content-Length is 5000 but the body has only 14 bytes"),
        (INFER, lambda: (b"{}", {"Inference-Header-Content-Length": "-1"}), 400,
         "Inference-Header-Content-Length must be a non-negative integer, got '-1'"),
        (INFER, lambda: binary_body(binary_images(100, [1, 224, 224, 3]), b"\0" * 100), 400,
         "binary_data_size is 100 bytes, expected 150528 (shape [1,224,224,3] x UINT8"),
        (INFER, lambda: (json.dumps(binary_images(PIXELS)).encode() + b"\0" * PIXELS, {}), 400,
         "binary tensor data needs the Inference-Header-Content-Length header"),
        # datatypes, shapes, counts
        (INFER, lambda: (json.dumps(images(IMAGE, "FLOAT", data=[1])).encode(), {}), 400,
         "input 'images' has unknown datatype 'FLOAT'; expected UINT8"),
        (INFER, lambda: (json.dumps(images(IMAGE, "FP32", data=[1.0])).encode(), {}), 400,
         "input 'images' has datatype FP32, expected UINT8"),
        (INFER, lambda: (json.dumps(images(IMAGE, data=[1, 2, 3])).encode(), {}), 400,
         "input 'images': shape [1,224,224,3] needs 150528 elements, data has 3"),
        (INFER, lambda: (json.dumps(images([1, 3, 224, 224], data=[0])).encode(), {}), 400,
         "input 'images' has shape [1,3,224,224], expected [-1,224,224,3] (NHWC, RGB)"),
        (INFER, lambda: (json.dumps(images([9, 224, 224, 3], data=[0])).encode(), {}), 400,
         "input 'images' has batch size 9; model 'resnet18' takes 1..8 (max_batch_size 8)"),
        (INFER, lambda: (json.dumps(images([0, 224, 224, 3], data=[])).encode(), {}), 400,
         "input 'images' has batch size 0"),
        (INFER, lambda: (json.dumps(images([1, -224, 224, 3], data=[])).encode(), {}), 400,
         "inputs.0.shape.1: Input should be greater than or equal to 0"),
        # JSON values
        (INFER, lambda: (b'{"inputs":[{"name":"images","shape":[1,224,224,3],'
                         b'"datatype":"UINT8","data":[NaN, 1]}]}', {}), 400,
         "invalid JSON header: NaN is not valid JSON"),
        (INFER, lambda: (json.dumps(images(IMAGE, data=[1.5] * PIXELS)).encode(), {}), 400,
         "input 'images' is UINT8: JSON data holds non-integer numbers, expected integers"),
        (INFER, lambda: (json.dumps(images(IMAGE, data=["1"] * PIXELS)).encode(), {}), 400,
         "input 'images' is UINT8: JSON data holds strings, expected integers"),
        (INFER, lambda: (json.dumps(images(IMAGE, data=[None] * PIXELS)).encode(), {}), 400,
         "input 'images' is UINT8: JSON data holds nulls"),
        (INFER, lambda: (json.dumps(images(IMAGE, data=[256] + [0] * (PIXELS - 1))).encode(),
                         {}), 400,
         "input 'images' is UINT8: values must be in 0..255, got 0..256"),
        (INFER, lambda: (json.dumps(images(IMAGE, data=[-1] + [0] * (PIXELS - 1))).encode(),
                         {}), 400,
         "values must be in 0..255, got -1..0"),
        (INFER, lambda: (json.dumps(images(IMAGE, data=[[1, 2], [3]])).encode(), {}), 400,
         "'data' must be a flat or evenly nested list of numbers"),
        (INFER, lambda: (json.dumps(images(IMAGE)).encode(), {}), 400,
         "input 'images' has neither 'data' nor binary_data_size"),
        (INFER, lambda: (DEEP, {}), 400, "invalid JSON header: nested too deeply"),
        (INFER, lambda: (DEEP_DATA, {}), 400,
         "'data' must be a flat or evenly nested list of numbers"),
        (INFER, lambda: (b"not json", {}), 400, "invalid JSON header: Expecting value"),
        (INFER, lambda: (b"\xff\xd8\xff\xe0", {}), 400, "invalid JSON header"),
        # request structure
        (INFER, lambda: (b"{}", {}), 400, "invalid inference request: inputs: Field required"),
        (INFER, lambda: (b'{"inputs": []}', {}), 400,
         "request has no inputs; give exactly one of 'images' (UINT8 [-1,224,224,3]) or "
         "'image_bytes'"),
        (INFER, lambda: (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8"}]}', {}),
         400, "unknown input 'x' for model 'resnet18'"),
        (INFER, lambda: (b'{"inputz": []}', {}), 400, "inputz: Extra inputs are not permitted"),
        (INFER, lambda: (json.dumps({"inputs": images(IMAGE, data=[0] * PIXELS)["inputs"] * 2,
                                     }).encode(), {}), 400,
         "request has inputs 'images', 'images'; give exactly one"),
        (INFER, lambda: (json.dumps({**images(IMAGE, data=[0] * PIXELS),
                                     "outputs": [{"name": "logits",
                                                  "parameters": {"classification": 1001}}]}
                                    ).encode(), {}), 400,
         "classification must be an integer in 1..1000 (0: raw logits), got 1001"),
        (INFER, lambda: (json.dumps({**images(IMAGE, data=[0] * PIXELS),
                                     "parameters": {"binary_data_output": "yes"}}).encode(), {}),
         400, "parameter binary_data_output must be a boolean, got 'yes'"),
        # encoded images
        (INFER, lambda: _bytes_body(b"abc", shape=[2]), 400,
         "input 'image_bytes': shape [2] needs 2 elements, data has 1"),
        (INFER, lambda: _bytes_body(b"abc", shape=[1, 2]), 400,
         "input 'image_bytes' has shape [1,2], expected [-1] or [-1,1]"),
        (INFER, lambda: binary_body({"inputs": [{"name": "image_bytes", "shape": [1],
                                                 "datatype": "BYTES",
                                                 "parameters": {"binary_data_size": 6}}]},
                                    struct.pack("<I", 9) + b"ab"), 400,
         "input 'image_bytes': BYTES element 0 declares 9 bytes but only 2 remain"),
        (INFER, lambda: _bytes_body(b"GIF89a-broken", shape=[1, 1]), 400,
         "input 'image_bytes' element 0: "),
        (INFER, lambda: (json.dumps({"inputs": [{"name": "image_bytes", "shape": [1],
                                                 "datatype": "BYTES", "data": ["%%%"]}]}
                                    ).encode(), {}), 400,
         "input 'image_bytes' element 0: JSON BYTES elements must be base64-encoded images"),
        (INFER, lambda: (json.dumps({"inputs": [{"name": "image_bytes", "shape": [1],
                                                 "datatype": "BYTES", "data": [1]}]}
                                    ).encode(), {}), 400,
         "input 'image_bytes' is BYTES: JSON 'data' must be a list of strings"),
        # unknown model or version
        ("/v2/models/nope/infer", lambda: (b"{}", {}), 404,
         "unknown model 'nope'; served models: ['resnet18', 'resnet50']"),
        ("/v2/models/resnet18/versions/2/infer", lambda: (b"{}", {}), 404,
         "unknown version '2' of model 'resnet18'; served versions: ['1']"),
    ],
)  # fmt: skip
def test_malformed_requests_get_clear_errors(
    server: ServerProcess, path: str, make: object, status: int, fragment: str
) -> None:
    body, headers = make()  # type: ignore[operator]
    r = server.client().post(path, content=body, headers=headers)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"], r.json()
    assert_healthy(server)


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/v2/models/nope", "unknown model 'nope'"),
        ("/v2/models/nope/ready", "unknown model 'nope'"),
        ("/v2/models/resnet18/versions/0/ready", "unknown version '0' of model 'resnet18'"),
        ("/v2/models/resnet50/versions/latest", "unknown version 'latest'"),
        ("/v2/models/nope/config", "unknown model 'nope'"),
        ("/v2/models/nope/stats", "unknown model 'nope'"),
        ("/v2/models/resnet18/versions/2/stats", "unknown version '2'"),
    ],
)
def test_unknown_model_or_version_is_404(server: ServerProcess, path: str, fragment: str) -> None:
    r = server.client().get(path)
    assert r.status_code == 404 and r.json()["code"] == "unknown_model"
    assert fragment in r.json()["error"]


def test_v2_requests_are_counted_under_their_endpoint(server: ServerProcess) -> None:
    def count(outcome: str, model: str = "resnet18") -> float:
        return metric(
            server, "resnet_requests_total", model=model, endpoint="v2_infer", outcome=outcome
        )

    ok, bad, unknown = count("ok"), count("bad_request"), count("unknown_model", "_unknown")
    c = server.client()
    assert c.post(INFER, json=images(IMAGE, data=[1] * PIXELS)).status_code == 200
    assert c.post(INFER, content=b"{").status_code == 400
    assert c.post("/v2/models/zzz-random/infer", content=b"{}").status_code == 404
    assert (count("ok"), count("bad_request")) == (ok + 1, bad + 1)
    assert count("unknown_model", "_unknown") == unknown + 1
    assert "zzz-random" not in c.get("/metrics").text


def test_api_key_guards_infer_only(model_dir: Path, tmp_path: Path) -> None:
    srv = start_server(
        model_dir, tmp_path, models="resnet18", api_key="s3cret-v2-test-key", warmup_batch_sizes="1"
    )
    try:
        c = srv.client()
        body = json.dumps(images(IMAGE, data=[0] * PIXELS)).encode()
        r = c.post(INFER, content=body)
        assert r.status_code == 401 and "API key" in r.json()["error"]
        assert (
            c.post(INFER, content=body, headers={"x-api-key": "s3cret-v2-test-key"}).status_code
            == 200
        )
        for path in ("/v2", "/v2/health/ready", "/v2/models/resnet18", "/v2/models/resnet18/stats"):
            assert c.get(path).status_code == 200, path
    finally:
        srv.stop()


def test_too_large_body_is_refused_before_parsing(model_dir: Path, tmp_path: Path) -> None:
    srv = start_server(
        model_dir, tmp_path, models="resnet18", max_body_bytes=100_000, warmup_batch_sizes="1"
    )
    try:
        body, headers = binary_body(binary_images(PIXELS), b"\0" * PIXELS)
        r = srv.client().post(INFER, content=body, headers=headers)
        assert r.status_code == 413 and r.json()["code"] == "body_too_large"
        with httpx.Client(base_url=srv.url) as c:
            assert c.get("/v2/health/ready").status_code == 200
    finally:
        srv.stop()


def test_json_bodies_have_their_own_lower_cap(model_dir: Path, tmp_path: Path) -> None:
    # JSON grows ~25x when parsed ("data": [{}, {}, ...]: 2 MB became +48 MiB), so it gets a
    # cap of its own below max_body_bytes; binary tensors of the same size are served.
    srv = start_server(
        model_dir, tmp_path, models="resnet18", max_json_body_bytes=65536, warmup_batch_sizes="1"
    )
    try:
        c = srv.client()
        big = json.dumps(images(IMAGE, data=[7] * PIXELS)).encode()  # ~450 kB of JSON
        r = c.post(INFER, content=big)
        assert r.status_code == 413
        assert r.json() == {
            "error": f"the JSON part of this request is {len(big)} bytes, over the limit of "
            "65536 for JSON; send tensors as binary data (the binary tensor data extension, "
            "Inference-Header-Content-Length)",
            "code": "body_too_large",
        }
        body, headers = binary_body(binary_images(PIXELS), b"\7" * PIXELS)
        assert c.post(INFER, content=body, headers=headers).status_code == 200
        objects = json.dumps(images(IMAGE, data=[{}] * 5000)).encode()
        r = c.post(INFER, content=objects)
        assert r.status_code == 400
        assert (
            r.json()["error"]
            == "input 'images' is UINT8: JSON data holds objects, expected integers"
        )
    finally:
        srv.stop()
