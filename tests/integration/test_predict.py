"""/predict, /models, /metrics and errors through a real uvicorn process on real models."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families

from contract.images.preprocess import preprocess
from contract.modelmeta import parse_metadata
from contract.scores import softmax
from tests.conftest import ServerProcess
from tests.imagegen import encode, jpeg, photo_like


def metric(srv: ServerProcess, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    text = srv.client().get("/metrics").text
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def direct_probs(model_dir: Path, name: str, data: bytes) -> np.ndarray:
    session = ort.InferenceSession(
        str(model_dir / f"{name}.onnx"), providers=["CPUExecutionProvider"]
    )
    meta = parse_metadata(session.get_modelmeta().custom_metadata_map)
    x = preprocess(data, meta.preprocessing)[np.newaxis]
    return softmax(session.run(None, {"images": x})[0])[0]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_predict_matches_direct_onnxruntime(
    server: ServerProcess, model_dir: Path, name: str
) -> None:
    data = jpeg(500, 375, seed=3)
    r = server.client().post(
        f"/predict/{name}?top_k=5", content=data, headers={"content-type": "image/jpeg"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == name and body["random_weights"] is True
    preds = body["results"][0]["predictions"]
    probs = direct_probs(model_dir, name, data)
    expected = np.argsort(-probs, kind="stable")[:5]
    assert [p["index"] for p in preds] == expected.tolist()
    np.testing.assert_allclose([p["probability"] for p in preds], probs[expected], atol=1e-5)
    labels = parse_metadata(
        ort.InferenceSession(str(model_dir / f"{name}.onnx")).get_modelmeta().custom_metadata_map
    ).labels
    assert [p["label"] for p in preds] == [labels[i] for i in expected]
    timing = body["results"][0]["timing"]
    assert timing["batch_size"] >= 1 and timing["inference_ms"] > 0 and timing["preprocess_ms"] > 0


def test_multipart_several_images_in_order(server: ServerProcess, model_dir: Path) -> None:
    datas = [jpeg(300 + 40 * i, 260, seed=10 + i) for i in range(3)]
    files = [("file", (f"{i}.jpg", d, "image/jpeg")) for i, d in enumerate(datas)]
    r = server.client().post("/predict?model=resnet18&top_k=3", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3
    for d, res in zip(datas, results, strict=True):
        probs = direct_probs(model_dir, "resnet18", d)
        assert [p["index"] for p in res["predictions"]] == np.argsort(-probs, kind="stable")[
            :3
        ].tolist()


def test_more_images_than_a_batch_are_answered_in_order(
    server: ServerProcess, model_dir: Path
) -> None:
    """10 images with max_batch_size 8: two batcher items, one answer per image, in order."""
    datas = [jpeg(200 + 10 * i, 180, seed=40 + i) for i in range(10)]
    files = [("file", (f"{i}.jpg", d, "image/jpeg")) for i, d in enumerate(datas)]
    r = server.client().post("/predict/resnet18?top_k=1", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["predictions"][0]["index"] for res in results] == [
        int(np.argmax(direct_probs(model_dir, "resnet18", d))) for d in datas
    ]
    assert sorted({res["timing"]["batch_size"] for res in results}) == [2, 8]


def test_concurrent_requests_are_batched_and_answered_individually(
    server: ServerProcess, model_dir: Path
) -> None:
    datas = [jpeg(256, 256, seed=100 + i) for i in range(8)]
    execs_before = metric(server, "resnet_inference_exec_count_total", model="resnet18")
    count_before = metric(server, "resnet_inference_count_total", model="resnet18")
    ok_before = metric(
        server, "resnet_requests_total", model="resnet18", endpoint="predict", outcome="ok"
    )

    def send(d: bytes) -> dict:
        with server.new_client() as c:
            r = c.post(
                "/predict/resnet18?top_k=1", content=d, headers={"content-type": "image/jpeg"}
            )
            assert r.status_code == 200, r.text
            return r.json()

    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(send, datas))
    for d, b in zip(datas, bodies, strict=True):
        assert b["results"][0]["predictions"][0]["index"] == int(
            np.argmax(direct_probs(model_dir, "resnet18", d))
        )
    execs = metric(server, "resnet_inference_exec_count_total", model="resnet18") - execs_before
    count = metric(server, "resnet_inference_count_total", model="resnet18") - count_before
    assert count == 8
    assert execs < 8, "30 ms delay with 8 concurrent requests must produce batches > 1"
    assert max(b["results"][0]["timing"]["batch_size"] for b in bodies) > 1
    assert (
        metric(server, "resnet_requests_total", model="resnet18", endpoint="predict", outcome="ok")
        - ok_before
        == 8
    )
    assert metric(server, "resnet_batch_size_count", model="resnet18") >= execs


def test_models_endpoint_describes_what_is_served(server: ServerProcess) -> None:
    body = server.client().get("/models").json()
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"resnet18", "resnet50"}
    r18 = by_name["resnet18"]
    assert r18["architecture"] == "resnet18" and r18["provider"] == "cpu"
    assert r18["random_weights"] is True and r18["weights"] == "random"
    assert r18["input"] == {
        "name": "images",
        "dtype": "uint8",
        "layout": "NHWC",
        "shape": [-1, 224, 224, 3],
    }
    assert r18["batching"]["max_batch_size"] == 8 and r18["batching"]["policy"] == "delay"
    assert r18["preprocessing"]["resize_size"] == 256
    assert body["default_model"] == "resnet18"


def test_metrics_info_and_load_time(server: ServerProcess) -> None:
    assert (
        metric(
            server,
            "resnet_model_info",
            model="resnet50",
            provider="cpu",
            random_weights="true",
            fallback="false",
        )
        == 1
    )
    assert metric(server, "resnet_model_load_seconds", model="resnet50") > 0
    assert metric(server, "resnet_queue_depth", model="resnet50") == 0


def test_health(server: ServerProcess) -> None:
    c = server.client()
    assert c.get("/healthz").json() == {"status": "ok"}
    assert c.get("/readyz").json() == {"status": "ready"}
    assert "server" not in c.get("/healthz").headers


GIF_BYTES = encode(photo_like(64, 64), "GIF")


@pytest.mark.parametrize(
    ("path", "body", "ctype", "status", "code", "fragment"),
    [
        ("/predict", b"", "image/jpeg", 400, "bad_request", "empty body"),
        ("/predict", b"hello, not an image", "image/jpeg", 400, "invalid_image", "cannot"),
        ("/predict", jpeg()[:400], "image/jpeg", 400, "invalid_image", ""),
        ("/predict", b"{}", "application/json", 415, "unsupported_media_type", "content type"),
        ("/predict/nope", jpeg(), "image/jpeg", 404, "unknown_model", "unknown model 'nope'"),
        (
            "/predict?model=..%2F..%2Fetc%2Fpasswd",
            jpeg(),
            "image/jpeg",
            404,
            "unknown_model",
            "unknown model",
        ),
        ("/predict?top_k=0", jpeg(), "image/jpeg", 422, "invalid_parameter", "top_k"),
        ("/predict?top_k=1001", jpeg(), "image/jpeg", 422, "invalid_parameter", "top_k"),
        ("/predict?top_k=abc", jpeg(), "image/jpeg", 422, "invalid_parameter", "top_k"),
    ],
)
def test_bad_requests_get_clear_errors(
    server: ServerProcess, path: str, body: bytes, ctype: str, status: int, code: str, fragment: str
) -> None:
    r = server.client().post(path, content=body, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    assert r.json()["code"] == code
    assert fragment in r.json()["error"]
    assert server.client().get("/readyz").status_code == 200


def test_errors_are_counted_with_bounded_labels(server: ServerProcess) -> None:
    before = metric(server, "resnet_requests_total", model="_unknown", outcome="unknown_model")
    server.client().post(
        "/predict/some-random-name-123", content=jpeg(), headers={"content-type": "image/jpeg"}
    )
    assert (
        metric(server, "resnet_requests_total", model="_unknown", outcome="unknown_model")
        == before + 1
    )
    assert "some-random-name-123" not in server.client().get("/metrics").text


def test_gif_first_frame_is_accepted(server: ServerProcess) -> None:
    r = server.client().post("/predict", content=GIF_BYTES, headers={"content-type": "image/gif"})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"][0]["predictions"]) == 5
