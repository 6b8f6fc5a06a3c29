"""Shared helpers of the gRPC suites: tritonclient.grpc clients for a test server, inputs, and
the raw stubs (tritonclient's own protobuf modules) where a test needs trailing metadata."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import ServerProcess


def client(srv: ServerProcess) -> tgrpc.InferenceServerClient:
    return tgrpc.InferenceServerClient(srv.grpc_url)


def images_input(x: np.ndarray) -> tgrpc.InferInput:
    inp = tgrpc.InferInput("images", list(x.shape), "UINT8")
    return inp.set_data_from_numpy(x)


def bytes_input(images: list[bytes]) -> tgrpc.InferInput:
    arr = np.array(images, dtype=object).reshape(-1, 1)
    inp = tgrpc.InferInput("image_bytes", list(arr.shape), "BYTES")
    return inp.set_data_from_numpy(arr)


def stub(srv: ServerProcess) -> tuple[grpc.Channel, service_pb2_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(srv.grpc_url)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def raw_images_request(model: str, x: np.ndarray) -> service_pb2.ModelInferRequest:
    """A ModelInferRequest as tritonclient.grpc builds it: ``images`` in raw_input_contents."""
    req = service_pb2.ModelInferRequest(model_name=model)
    req.inputs.add(name="images", datatype="UINT8", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    return req


def assert_rpc_error(
    info: pytest.ExceptionInfo[InferenceServerException], code: str, message: str
) -> None:
    """tritonclient's exception carries grpc's status code and the details verbatim."""
    got = (info.value.status(), info.value.message())
    assert got == (f"StatusCode.{code}", message), got
