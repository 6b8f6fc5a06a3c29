"""Protobuf messages of ``inference.GRPCInferenceService`` to and from the v2 front door's own
requests and documents (:mod:`server.v2`), so both protocols check and answer alike.

A ``ModelInferRequest`` becomes the :class:`~server.v2.codec.ParsedRequest` a REST body
parses into: the tensors' names, shapes, datatypes and parameters are validated by the same
schema, and each input's bytes are its ``raw_input_contents`` entry (what ``tritonclient.grpc``
sends; Triton's BYTES serialisation for ``image_bytes``) or, from typed ``contents``, the
same: ``uint_contents`` for UINT8, ``bytes_contents`` (one encoded image each) for BYTES.
Outputs always travel as ``raw_output_contents``, as Triton sends them: FP32 little-endian
logits, or classification strings in the BYTES serialisation.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, Final

from google.protobuf import json_format

from contract.errors import BadRequest
from contract.scores import Scores
from server.grpc.proto import grpc_service_pb2 as pb
from server.grpc.proto import model_config_pb2 as mc
from server.models.control import IndexEntry
from server.models.repository import ServedModel
from server.v2 import codec
from server.v2.codec import ParsedRequest
from server.v2.inference import Prepared, output_tensors
from server.v2.schemas import ModelConfig, ModelMetadataResponse, ModelStats, ServerMetadata

_LENGTH: Final = struct.Struct("<I")


def parameters(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """``InferParameter``s as the JSON scalars REST parameters are (unset ones left out)."""
    out: dict[str, Any] = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(p, which)
    return out


def parsed_request(request: pb.ModelInferRequest) -> ParsedRequest:
    """The request as REST's parser would have returned it. Blocking (CPU; large typed
    ``contents`` only).

    Raises:
        BadRequest: ``raw_input_contents`` not one per input, an input with both or neither of
            raw and typed contents, or anything the v2 schema rejects (same messages as REST).
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; give "
            "one per input, in input order, or none"
        )
    inputs: list[dict[str, Any]] = []
    binary: dict[int, memoryview] = {}
    for i, tensor in enumerate(request.inputs):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "shape": list(tensor.shape),
            "datatype": tensor.datatype,
            "parameters": parameters(tensor.parameters),
        }
        typed = tensor.HasField("contents")
        if raw and typed:
            raise BadRequest(f"input {tensor.name[:64]!r} has both contents and raw_input_contents")
        if raw:
            binary[i] = memoryview(raw[i])
        elif not typed:
            raise BadRequest(
                f"input {tensor.name[:64]!r} has neither contents nor raw_input_contents"
            )
        elif tensor.datatype == codec.BYTES:
            binary[i] = memoryview(_serialise(tensor.contents.bytes_contents))
        else:
            entry["data"] = list(tensor.contents.uint_contents)  # UINT8 travels as uint32
        inputs.append(entry)
    outputs = [{"name": o.name, "parameters": parameters(o.parameters)} for o in request.outputs]
    header = codec.validate_header(
        {
            "id": request.id or None,
            "parameters": parameters(request.parameters),
            "inputs": inputs,
            "outputs": outputs or None,
        }
    )
    return ParsedRequest(header, binary)


def _serialise(elements: Any) -> bytes:
    """Elements (bytes) in Triton's BYTES serialisation: a 4-byte little-endian length each."""
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


def infer_response(model: ServedModel, prepared: Prepared, scores: Scores) -> pb.ModelInferResponse:
    """The answer to a request: each requested output's metadata, and its bytes in
    ``raw_output_contents``. Blocking (CPU; microseconds for logits)."""
    response = pb.ModelInferResponse(
        model_name=model.name, model_version=model.version, id=prepared.request_id or ""
    )
    for tensor in output_tensors(model, prepared, scores):
        response.outputs.add(
            name=tensor.name, datatype=tensor.datatype, shape=list(tensor.data.shape)
        )
        response.raw_output_contents.append(codec.raw_bytes(tensor))
    return response


def server_metadata(doc: ServerMetadata) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name=doc.name, version=doc.version, extensions=doc.extensions)


def model_metadata(doc: ModelMetadataResponse) -> pb.ModelMetadataResponse:
    return json_format.ParseDict(doc.model_dump(), pb.ModelMetadataResponse())


def model_config(doc: ModelConfig) -> pb.ModelConfigResponse:
    """REST's configuration document, whose fields are Triton's ``ModelConfig``'s by name."""
    return pb.ModelConfigResponse(config=json_format.ParseDict(doc.model_dump(), mc.ModelConfig()))


def model_statistics(docs: list[ModelStats]) -> pb.ModelStatisticsResponse:
    """REST's statistics documents, whose fields are Triton's ``ModelStatistics``'s by name."""
    return json_format.ParseDict(
        {"model_stats": [d.model_dump() for d in docs]}, pb.ModelStatisticsResponse()
    )


def repository_index(entries: list[IndexEntry]) -> pb.RepositoryIndexResponse:
    """The repository index (:class:`server.models.control.IndexEntry`) as its protobuf."""
    return pb.RepositoryIndexResponse(
        models=[
            pb.RepositoryIndexResponse.ModelIndex(
                name=e.name, version=e.version, state=e.state, reason=e.reason
            )
            for e in entries
        ]
    )
