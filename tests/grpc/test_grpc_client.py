"""The v2 gRPC service through tritonclient.grpc (what Triton users run) against the session's
real server: the same answers as REST for the same inputs, metadata, configuration,
statistics, health and every error with its status code and exact message."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException

from tests.conftest import ServerProcess
from tests.grpc.helpers import assert_rpc_error, bytes_input, client, images_input, stub
from tests.imagegen import jpeg
from tests.v2 import helpers as v2
from tests.v2.helpers import direct_logits, random_images


@pytest.fixture
def gc(server: ServerProcess) -> Iterator[tgrpc.InferenceServerClient]:
    c = client(server)
    yield c
    c.close()


@pytest.fixture
def hc(server: ServerProcess) -> Iterator[thttp.InferenceServerClient]:
    c = v2.client(server)
    yield c
    c.close()


def test_health_and_readiness(gc: tgrpc.InferenceServerClient) -> None:
    assert gc.is_server_live() and gc.is_server_ready()
    assert gc.is_model_ready("resnet18") and gc.is_model_ready("resnet50", "1")
    # As REST's 404 reads to tritonclient.http: not ready, no error.
    assert not gc.is_model_ready("resnet18", "2")
    assert not gc.is_model_ready("nope")


def test_grpc_health_service(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            got = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert got.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        stream = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
        stream.cancel()


def test_server_metadata_equals_rest(
    gc: tgrpc.InferenceServerClient, hc: thttp.InferenceServerClient
) -> None:
    got = gc.get_server_metadata()
    assert (got.name, list(got.extensions)) == (
        "resnet-server",
        [
            "binary_tensor_data",
            "classification",
            "model_configuration",
            "model_repository",
            "statistics",
        ],
    )
    assert json_format.MessageToDict(got) == hc.get_server_metadata()


@pytest.mark.parametrize("version", ["", "1"])
def test_model_metadata_equals_rest(
    gc: tgrpc.InferenceServerClient, hc: thttp.InferenceServerClient, version: str
) -> None:
    got = gc.get_model_metadata("resnet50", version)
    assert [(t.name, t.datatype, list(t.shape)) for t in got.inputs] == [
        ("images", "UINT8", [-1, 224, 224, 3]),
        ("image_bytes", "BYTES", [-1, 1]),
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in got.outputs] == [
        ("logits", "FP32", [-1, 1000])
    ]
    rest = hc.get_model_metadata("resnet50", version)
    assert (got.name, list(got.versions), got.platform) == (
        rest["name"],
        rest["versions"],
        rest["platform"],
    )


def test_model_config_equals_rest(
    gc: tgrpc.InferenceServerClient, hc: thttp.InferenceServerClient
) -> None:
    got = gc.get_model_config("resnet18").config
    # REST's document read by tritonclient's own ModelConfig message: every field, same values.
    expected = json_format.ParseDict(
        hc.get_model_config("resnet18"), model_config_pb2.ModelConfig()
    )
    assert got == expected
    assert (got.max_batch_size, got.dynamic_batching.max_queue_delay_microseconds) == (8, 30_000)
    assert got.input[0].format == model_config_pb2.ModelInput.FORMAT_NHWC
    assert got.parameters["random_weights"].string_value == "true"


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_images_equal_rest_and_onnxruntime(
    gc: tgrpc.InferenceServerClient,
    hc: thttp.InferenceServerClient,
    model_dir: Path,
    name: str,
    batch: int,
) -> None:
    x = random_images(batch, seed=100 + batch)
    result = gc.infer(name, [images_input(x)], request_id="req-9")
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("req-9", name, "1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("logits", "FP32", [batch, 1000])
    ]
    got = result.as_numpy("logits")
    rest = hc.infer(name, [v2.images_input(x)]).as_numpy("logits")
    np.testing.assert_array_equal(got, rest)
    np.testing.assert_allclose(got, direct_logits(model_dir, name, x), rtol=0, atol=1e-5)


def test_image_bytes_equal_rest(
    gc: tgrpc.InferenceServerClient, hc: thttp.InferenceServerClient
) -> None:
    data = [jpeg(500, 375, seed=3), jpeg(320, 480, seed=4)]
    got = gc.infer("resnet50", [bytes_input(data)]).as_numpy("logits")
    assert got.shape == (2, 1000)
    np.testing.assert_array_equal(
        got, hc.infer("resnet50", [v2.bytes_input(data)]).as_numpy("logits")
    )


def test_typed_contents_equal_raw(server: ServerProcess) -> None:
    """``uint_contents`` / ``bytes_contents`` instead of raw_input_contents: the same answer."""
    x = random_images(1, seed=31)
    image = jpeg(300, 200, seed=5)
    channel, s = stub(server)
    with channel:
        raw = service_pb2.ModelInferRequest(model_name="resnet18")
        raw.inputs.add(name="images", datatype="UINT8", shape=[1, 224, 224, 3])
        raw.raw_input_contents.append(x.tobytes())
        typed = service_pb2.ModelInferRequest(model_name="resnet18")
        typed.inputs.add(
            name="images", datatype="UINT8", shape=[1, 224, 224, 3]
        ).contents.uint_contents.extend(x.reshape(-1).tolist())
        enc_raw = service_pb2.ModelInferRequest(model_name="resnet18")
        enc_raw.inputs.add(name="image_bytes", datatype="BYTES", shape=[1])
        enc_raw.raw_input_contents.append(len(image).to_bytes(4, "little") + image)
        enc_typed = service_pb2.ModelInferRequest(model_name="resnet18")
        enc_typed.inputs.add(
            name="image_bytes", datatype="BYTES", shape=[1]
        ).contents.bytes_contents.append(image)
        a, b, c, d = (s.ModelInfer(r, timeout=30) for r in (raw, typed, enc_raw, enc_typed))
    assert a.raw_output_contents[0] == b.raw_output_contents[0]
    assert c.raw_output_contents[0] == d.raw_output_contents[0]
    assert len(a.raw_output_contents[0]) == 1000 * 4


def test_classification_equals_rest(
    gc: tgrpc.InferenceServerClient, hc: thttp.InferenceServerClient, model_dir: Path
) -> None:
    x = random_images(3, seed=21)
    got = gc.infer(
        "resnet18", [images_input(x)], outputs=[tgrpc.InferRequestedOutput("logits", class_count=5)]
    )
    strings = got.as_numpy("logits")
    assert strings.shape == (3, 5)
    rest = hc.infer(
        "resnet18",
        [v2.images_input(x)],
        outputs=[thttp.InferRequestedOutput("logits", class_count=5)],
    )
    assert strings.tolist() == rest.as_numpy("logits").tolist()
    logits, names = direct_logits(model_dir, "resnet18", x), v2.labels(model_dir, "resnet18")
    top = np.argsort(-logits[0], kind="stable")[:5]
    assert strings[0].tolist() == [f"{logits[0, i]:f}:{i}:{names[i]}".encode() for i in top]


def test_statistics_count_grpc_requests(
    gc: tgrpc.InferenceServerClient, server: ServerProcess
) -> None:
    def stats() -> service_pb2.ModelStatistics:
        (entry,) = gc.get_inference_statistics("resnet50").model_stats
        return entry

    before, ok_before = (
        stats(),
        v2.metric(
            server, "resnet_requests_total", model="resnet50", endpoint="grpc_infer", outcome="ok"
        ),
    )
    gc.infer("resnet50", [images_input(random_images(3, seed=41))])
    gc.infer("resnet50", [images_input(random_images(2, seed=42))])
    v2.client(server).infer("resnet50", [v2.images_input(random_images(1, seed=43))])  # REST
    after = stats()
    assert (after.name, after.version) == ("resnet50", "1")
    assert after.inference_count - before.inference_count == 6  # both protocols' images
    assert 1 <= after.execution_count - before.execution_count <= 3
    assert after.inference_stats.success.count - before.inference_stats.success.count == 3
    assert (
        v2.metric(
            server, "resnet_requests_total", model="resnet50", endpoint="grpc_infer", outcome="ok"
        )
        - ok_before
        == 2
    )
    # The same document REST serves, read at the same moment.
    rest = v2.stats(server, "resnet50")
    assert json_format.MessageToDict(after, preserving_proto_field_name=True)[
        "inference_count"
    ] == str(rest["inference_count"])
    names = {m.name for m in gc.get_inference_statistics().model_stats}
    assert names == {"resnet18", "resnet50"}


def fp32_input(x: np.ndarray) -> tgrpc.InferInput:
    return tgrpc.InferInput("images", list(x.shape), "FP32").set_data_from_numpy(
        x.astype(np.float32)
    )


@pytest.mark.parametrize(
    ("call", "code", "message"),
    [
        (lambda c, x: c.infer("nope", [images_input(x)]), "NOT_FOUND",
         "unknown model 'nope'; served models: ['resnet18', 'resnet50']"),
        (lambda c, x: c.infer("resnet18", [images_input(x)], model_version="3"), "NOT_FOUND",
         "unknown version '3' of model 'resnet18'; served versions: ['1']"),
        (lambda c, x: c.get_model_metadata("nope"), "NOT_FOUND",
         "unknown model 'nope'; served models: ['resnet18', 'resnet50']"),
        (lambda c, x: c.get_model_config("resnet18", "2"), "NOT_FOUND",
         "unknown version '2' of model 'resnet18'; served versions: ['1']"),
        (lambda c, x: c.get_inference_statistics("nope"), "NOT_FOUND",
         "unknown model 'nope'; served models: ['resnet18', 'resnet50']"),
        (lambda c, x: c.infer("resnet18", [images_input(x[:, :100])]), "INVALID_ARGUMENT",
         "input 'images' has shape [1,100,224,3], expected [-1,224,224,3] (NHWC, RGB)"),
        (lambda c, x: c.infer("resnet18", [images_input(random_images(9))]), "INVALID_ARGUMENT",
         "input 'images' has batch size 9; model 'resnet18' takes 1..8 (max_batch_size 8)"),
        (lambda c, x: c.infer("resnet18", [fp32_input(x)]),
         "INVALID_ARGUMENT", "input 'images' has datatype FP32, expected UINT8"),
        (lambda c, x: c.infer("resnet18", [images_input(x), bytes_input([b"x"])]),
         "INVALID_ARGUMENT", "request has inputs 'images', 'image_bytes'; give exactly one of "
         "'images' (UINT8 [-1,224,224,3]) or 'image_bytes' (BYTES [-1] or [-1,1], encoded images)"),
        (lambda c, x: c.infer("resnet18", [images_input(x)],
                              outputs=[tgrpc.InferRequestedOutput("probs")]), "INVALID_ARGUMENT",
         "requested outputs 'probs'; model 'resnet18' has one output, 'logits' (FP32 [-1,1000])"),
        (lambda c, x: c.infer("resnet18", [images_input(x)],
                              outputs=[tgrpc.InferRequestedOutput("logits", class_count=1001)]),
         "INVALID_ARGUMENT",
         "classification must be an integer in 1..1000 (0: raw logits), got 1001"),
        (lambda c, x: c.infer("resnet18", [bytes_input([jpeg(), b"not an image"])]),
         "INVALID_ARGUMENT", "input 'image_bytes' element 1: cannot decode image: "),
        (lambda c, x: c.get_model_repository_index(), "FAILED_PRECONDITION",
         "the repository API (index) is off: model_control=none; start the server with "
         "RESNET_MODEL_CONTROL=explicit (or poll) to enable it"),
        (lambda c, x: c.get_system_shared_memory_status(), "UNIMPLEMENTED",
         "SystemSharedMemoryStatus is not implemented by resnet-server (docs/V2_PROTOCOL.md "
         "lists what is)"),
    ],
)  # fmt: skip
def test_errors_carry_status_and_message(
    gc: tgrpc.InferenceServerClient, call: object, code: str, message: str
) -> None:
    with pytest.raises(InferenceServerException) as info:
        call(gc, random_images(1))  # type: ignore[operator]
    if message.endswith(": "):  # the decoder's own reason follows
        assert info.value.status() == f"StatusCode.{code}"
        assert info.value.message().startswith(message), info.value.message()
    else:
        assert_rpc_error(info, code, message)
    assert gc.is_server_ready()


def test_malformed_raw_requests(server: ServerProcess) -> None:
    """What tritonclient never sends but other clients may: every one INVALID_ARGUMENT."""
    x = random_images(1)
    cases = []
    two = service_pb2.ModelInferRequest(model_name="resnet18")
    two.inputs.add(name="images", datatype="UINT8", shape=[1, 224, 224, 3])
    two.raw_input_contents.extend([x.tobytes(), b""])
    cases.append(
        (
            two,
            "raw_input_contents has 2 entries for 1 inputs; give one per input, in "
            "input order, or none",
        )
    )
    empty = service_pb2.ModelInferRequest(model_name="resnet18")
    empty.inputs.add(name="images", datatype="UINT8", shape=[1, 224, 224, 3])
    cases.append((empty, "input 'images' has neither contents nor raw_input_contents"))
    short = service_pb2.ModelInferRequest(model_name="resnet18")
    short.inputs.add(name="images", datatype="UINT8", shape=[1, 224, 224, 3])
    short.raw_input_contents.append(x.tobytes()[:100])
    cases.append(
        (
            short,
            "input 'images': binary_data_size is 100 bytes, expected 150528 (shape "
            "[1,224,224,3] x UINT8 1 byte(s))",
        )
    )
    negative = service_pb2.ModelInferRequest(model_name="resnet18")
    negative.inputs.add(name="images", datatype="UINT8", shape=[-1, 224, 224, 3])
    negative.raw_input_contents.append(x.tobytes())
    cases.append(
        (
            negative,
            "invalid inference request: inputs.0.shape.0: Input should be "
            "greater than or equal to 0",
        )
    )
    channel, s = stub(server)
    with channel:
        for request, message in cases:
            with pytest.raises(grpc.RpcError) as info:
                s.ModelInfer(request, timeout=30)
            assert (info.value.code(), info.value.details()) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                message,
            )
