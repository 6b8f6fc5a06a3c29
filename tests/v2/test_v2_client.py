"""The v2 protocol through tritonclient (what Triton users run) against a real server."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from contract.scores import softmax
from server import __version__
from tests.conftest import ServerProcess
from tests.imagegen import jpeg
from tests.v2.helpers import (
    bytes_input,
    client,
    direct_logits,
    images_input,
    labels,
    random_images,
)


@pytest.fixture
def tc(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    c = client(server)
    yield c
    c.close()


def test_health_and_readiness(tc: triton.InferenceServerClient) -> None:
    assert tc.is_server_live() and tc.is_server_ready()
    assert tc.is_model_ready("resnet18") and tc.is_model_ready("resnet50", "1")
    assert not tc.is_model_ready("resnet18", "2")
    assert not tc.is_model_ready("nope")


def test_server_metadata_lists_exactly_the_extensions(tc: triton.InferenceServerClient) -> None:
    assert tc.get_server_metadata() == {
        "name": "resnet-server",
        "version": __version__,
        "extensions": [
            "binary_tensor_data",
            "classification",
            "model_configuration",
            "model_repository",
            "statistics",
        ],
    }


def test_model_metadata(tc: triton.InferenceServerClient) -> None:
    expected = {
        "name": "resnet50",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "images", "datatype": "UINT8", "shape": [-1, 224, 224, 3]},
            {"name": "image_bytes", "datatype": "BYTES", "shape": [-1, 1]},
        ],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}],
    }
    assert tc.get_model_metadata("resnet50") == expected
    assert tc.get_model_metadata("resnet50", "1") == expected


def test_model_config(tc: triton.InferenceServerClient) -> None:
    cfg = tc.get_model_config("resnet18")
    assert cfg["name"] == "resnet18" and cfg["platform"] == "onnxruntime_onnx"
    assert cfg["backend"] == "onnxruntime" and cfg["max_batch_size"] == 8
    assert cfg["input"] == [
        {
            "name": "images",
            "data_type": "TYPE_UINT8",
            "format": "FORMAT_NHWC",
            "dims": [224, 224, 3],
            "optional": True,
        },
        {
            "name": "image_bytes",
            "data_type": "TYPE_STRING",
            "format": "FORMAT_NONE",
            "dims": [1],
            "optional": True,
        },
    ]
    assert cfg["output"] == [
        {"name": "logits", "data_type": "TYPE_FP32", "dims": [1000], "label_filename": ""}
    ]
    # The session server batches with a 30 ms delay, a queue of 64 and the default 10 s timeout.
    assert cfg["dynamic_batching"] == {
        "preferred_batch_size": [8],
        "max_queue_delay_microseconds": 30_000,
        "preserve_ordering": False,
        "default_queue_policy": {
            "timeout_action": "REJECT",
            "default_timeout_microseconds": 10_000_000,
            "allow_timeout_override": False,
            "max_queue_size": 64,
        },
    }
    assert cfg["instance_group"] == [
        {"name": "resnet18_0", "kind": "KIND_CPU", "count": 1, "gpus": []}
    ]
    assert cfg["parameters"]["random_weights"] == {"string_value": "true"}


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_binary_infer_matches_onnxruntime(
    tc: triton.InferenceServerClient, model_dir: Path, name: str, batch: int
) -> None:
    x = random_images(batch, seed=batch)
    result = tc.infer(name, [images_input(x)], request_id="req-7")
    assert result.get_response()["id"] == "req-7"
    assert result.get_response()["model_version"] == "1"
    got = result.as_numpy("logits")
    assert got.dtype == np.float32 and got.shape == (batch, 1000)
    np.testing.assert_allclose(got, direct_logits(model_dir, name, x), rtol=0, atol=1e-5)


def test_json_both_ways_matches_onnxruntime(
    tc: triton.InferenceServerClient, model_dir: Path
) -> None:
    x = random_images(2, seed=11)
    out = triton.InferRequestedOutput("logits", binary_data=False)
    result = tc.infer("resnet18", [images_input(x, binary=False)], outputs=[out])
    assert result.get_response()["outputs"][0]["datatype"] == "FP32"
    assert len(result.get_response()["outputs"][0]["data"]) == 2000
    np.testing.assert_allclose(
        result.as_numpy("logits"), direct_logits(model_dir, "resnet18", x), rtol=0, atol=1e-5
    )


def test_versioned_infer(tc: triton.InferenceServerClient, model_dir: Path) -> None:
    x = random_images(1, seed=5)
    got = tc.infer("resnet50", [images_input(x)], model_version="1").as_numpy("logits")
    np.testing.assert_allclose(got, direct_logits(model_dir, "resnet50", x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("binary", [True, False])
def test_classification_returns_top_k_logits(
    tc: triton.InferenceServerClient, model_dir: Path, binary: bool
) -> None:
    x = random_images(3, seed=21)
    out = triton.InferRequestedOutput("logits", binary_data=binary, class_count=5)
    result = tc.infer("resnet18", [images_input(x)], outputs=[out])
    got = result.as_numpy("logits")
    assert got.shape == (3, 5)
    logits, names = direct_logits(model_dir, "resnet18", x), labels(model_dir, "resnet18")
    for row, ref in zip(got, logits, strict=True):
        parsed = [(e.decode() if isinstance(e, bytes) else e).split(":", 2) for e in row]
        indices = [int(i) for _, i, _ in parsed]
        assert indices == np.argsort(-ref, kind="stable")[:5].tolist()
        # Triton's score is the raw output value (the logit), printed with 6 decimals.
        np.testing.assert_allclose([float(s) for s, _, _ in parsed], ref[indices], atol=1e-6)
        assert [label for _, _, label in parsed] == [names[i] for i in indices]


@pytest.mark.parametrize("binary", [True, False])
def test_encoded_image_matches_predict(
    tc: triton.InferenceServerClient, server: ServerProcess, binary: bool
) -> None:
    data = [jpeg(500, 375, seed=3), jpeg(320, 480, seed=4)]
    elements = data if binary else [base64.b64encode(d) for d in data]
    got = tc.infer("resnet50", [bytes_input(elements, binary=binary)]).as_numpy("logits")
    assert got.shape == (2, 1000)
    probs = softmax(got)
    for d, p in zip(data, probs, strict=True):
        r = server.client().post(
            "/predict/resnet50?top_k=5", content=d, headers={"content-type": "image/jpeg"}
        )
        preds = r.json()["results"][0]["predictions"]
        top5 = np.argsort(-p, kind="stable")[:5]
        assert [q["index"] for q in preds] == top5.tolist()
        np.testing.assert_allclose([q["probability"] for q in preds], p[top5], atol=1e-5)


@pytest.mark.parametrize(
    ("call", "status", "fragment"),
    [
        (lambda c, x: c.infer("nope", [images_input(x)]), "404", "unknown model 'nope'"),
        (lambda c, x: c.infer("resnet18", [images_input(x)], model_version="3"), "404",
         "unknown version '3' of model 'resnet18'"),
        (lambda c, x: c.infer("resnet18", [images_input(x[:, :100])]), "400",
         "input 'images' has shape [1,100,224,3], expected [-1,224,224,3]"),
        (lambda c, x: c.get_model_metadata("nope"), "404", "unknown model 'nope'"),
        (lambda c, x: c.get_model_config("resnet18", "2"), "404", "unknown version '2'"),
        (lambda c, x: c.infer("resnet18", [images_input(x)],
                              outputs=[triton.InferRequestedOutput("probs")]), "400",
         "requested outputs 'probs'; model 'resnet18' has one output, 'logits'"),
        (lambda c, x: c.infer("resnet18", [bytes_input([b"not an image"])]), "400",
         "input 'image_bytes' element 0: cannot decode image"),
    ],
)  # fmt: skip
def test_errors_surface_as_inference_server_exception(
    tc: triton.InferenceServerClient, call: object, status: str, fragment: str
) -> None:
    with pytest.raises(InferenceServerException) as info:
        call(tc, random_images(1))  # type: ignore[operator]
    assert info.value.status() == status
    assert fragment in info.value.message()
    assert tc.is_server_ready()
