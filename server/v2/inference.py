"""v2 inference on a served model: which inputs and outputs it has, how a request's tensors
become one batch of rows, and how the logits go back (raw, or Triton's classification).

Inputs (a request gives exactly one):

- ``images``: UINT8 ``[N, H, W, 3]`` (H = W = crop size), the model's own tensor.
- ``image_bytes``: BYTES ``[N]`` or ``[N, 1]``, one encoded image (JPEG, PNG, ...) per element,
  preprocessed like ``/predict``. Binary elements are the image bytes; JSON elements are
  base64 strings (images are not UTF-8 text).

``1 <= N <= max_batch_size``; the N rows go through the batcher as one item, so they run in
one execution, possibly with other requests' rows.

Output ``logits``: FP32 ``[N, classes]`` raw logits, or with ``parameters.classification = K``
BYTES ``[N, K]`` of ``"<logit>:<index>:<label>"`` (best first, logit printed with ``%f``
like Triton's ``std::to_string``).

Protocol-neutral: REST parses a body (``parse``), gRPC a protobuf message
(:mod:`server.grpc.translate`), into the same ``ParsedRequest``; from there ``prepare_parsed``
checks it and ``images`` is what both give the pipeline (:meth:`Pipeline.infer
<server.flow.pipeline.Pipeline.infer>`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass
from typing import Final

import numpy as np

from contract.errors import BadRequest
from contract.scores import Scores
from server.flow.pipeline import Images
from server.models.repository import ServedModel
from server.state import AppState
from server.v2 import codec
from server.v2.codec import OutputTensor, ParsedRequest
from server.v2.schemas import RequestInput

IMAGE_BYTES: Final = "image_bytes"
# Parsing and decoding a JSON tensor of this size takes long enough to leave the event loop.
_OFFLOAD_BYTES: Final = 64 * 1024


@dataclass(frozen=True)
class Output:
    """A requested output: ``binary`` encoding, ``classes`` = K for classification or 0."""

    binary: bool
    classes: int


@dataclass(frozen=True)
class Prepared:
    """A decoded request: either ``rows`` (uint8 ``[N, H, W, 3]``) or ``encoded`` images."""

    request_id: str | None
    outputs: list[Output]
    rows: np.ndarray | None
    encoded: list[bytes]


def image_shape(model: ServedModel) -> tuple[int, int, int]:
    crop = model.meta.preprocessing.crop_size
    return (crop, crop, 3)


async def parse(
    state: AppState, model: ServedModel, body: bytes, header_length: str | None
) -> Prepared:
    """A REST body, parsed and checked against ``model`` (large bodies in the pipeline's
    parse thread).

    Raises:
        BadRequest: anything malformed in the request (400).
        BodyTooLarge: the JSON part is longer than ``max_json_body_bytes``.
    """
    max_json = state.settings.max_json_body_bytes
    if len(body) > _OFFLOAD_BYTES:
        return await state.pipeline.parse(prepare, model, body, header_length, max_json)
    return prepare(model, body, header_length, max_json)


def images(prepared: Prepared) -> Images:
    """What the pipeline runs for a v2 request (REST and gRPC): its rows, or its
    ``image_bytes`` to decode, ranked to the largest classification K asked."""
    k = max(o.classes for o in prepared.outputs)
    if prepared.rows is not None:
        return Images(k, rows=prepared.rows)
    return Images(k, encoded=prepared.encoded, element=f"input {IMAGE_BYTES!r} element {{i}}: ")


async def encode(
    model: ServedModel, prepared: Prepared, scores: Scores
) -> tuple[bytes, int | None]:
    """``respond``; off the event loop unless it is one binary row."""
    if len(scores.logits) == 1 and all(o.binary for o in prepared.outputs):
        return respond(model, prepared, scores)
    # JSON of N x 1000 floats (or N x K classification strings) takes milliseconds of CPU.
    return await asyncio.to_thread(respond, model, prepared, scores)


def respond(model: ServedModel, prepared: Prepared, scores: Scores) -> tuple[bytes, int | None]:
    """Encode the requested outputs of ``scores`` as a REST body. Blocking (CPU)."""
    return codec.encode_response(
        model.name, model.version, prepared.request_id, output_tensors(model, prepared, scores)
    )


def output_tensors(model: ServedModel, prepared: Prepared, scores: Scores) -> list[OutputTensor]:
    """The requested outputs of ``scores``: FP32 logits, or BYTES classification strings."""
    return [_output(model, o, scores) for o in prepared.outputs]


def prepare(
    model: ServedModel, body: bytes, header_length: str | None, max_json_bytes: int
) -> Prepared:
    """Parse and check a REST request body against ``model`` and decode its input. Blocking
    (CPU).

    Raises:
        BadRequest: see the module docstring for what is accepted.
        BodyTooLarge: the JSON part is longer than ``max_json_bytes``.
    """
    return prepare_parsed(model, codec.parse_request(body, header_length, max_json_bytes))


def prepare_parsed(model: ServedModel, parsed: ParsedRequest) -> Prepared:
    """Check a parsed request (from REST or gRPC) against ``model``: its one input's name,
    datatype, shape and batch size, the outputs and their classification parameter.

    Raises:
        BadRequest: see the module docstring for what is accepted.
    """
    outputs = _outputs(model, parsed)
    index, inp = _the_input(model, parsed)
    raw = parsed.binary.get(index)
    if inp.name == IMAGE_BYTES:
        return Prepared(parsed.header.id, outputs, None, _encoded_images(model, inp, raw))
    return Prepared(parsed.header.id, outputs, _image_rows(model, inp, raw), [])


def _inputs_help(model: ServedModel) -> str:
    meta = model.meta
    shape = codec.format_shape([-1, *image_shape(model)])
    return (
        f"give exactly one of {meta.input_name!r} (UINT8 {shape}) or {IMAGE_BYTES!r} "
        f"(BYTES [-1] or [-1,1], encoded images)"
    )


def _the_input(model: ServedModel, parsed: ParsedRequest) -> tuple[int, RequestInput]:
    """The request's one input and its index. Raises BadRequest: unknown, none, or two."""
    names = [i.name for i in parsed.header.inputs]
    known = {model.meta.input_name, IMAGE_BYTES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BadRequest(
            f"unknown input {unknown[0][:64]!r} for model {model.name!r}; {_inputs_help(model)}"
        )
    if len(names) != 1:
        got = f"inputs {', '.join(repr(n) for n in names)}" if names else "no inputs"
        raise BadRequest(f"request has {got}; {_inputs_help(model)}")
    return 0, parsed.header.inputs[0]


def _batch(model: ServedModel, inp: RequestInput) -> int:
    n = inp.shape[0] if inp.shape else 0
    limit = model.config.max_batch_size
    if not 1 <= n <= limit:
        raise BadRequest(
            f"input {inp.name!r} has batch size {n}; model {model.name!r} takes 1.."
            f"{limit} (max_batch_size {limit})"
        )
    return n


def _image_rows(model: ServedModel, inp: RequestInput, raw: memoryview | None) -> np.ndarray:
    codec.check_datatype(inp, "UINT8")
    expected = image_shape(model)
    if len(inp.shape) != 4 or tuple(inp.shape[1:]) != expected:
        raise BadRequest(
            f"input {inp.name!r} has shape {codec.format_shape(inp.shape)}, expected "
            f"{codec.format_shape([-1, *expected])} (NHWC, RGB)"
        )
    _batch(model, inp)
    return codec.uint8_tensor(inp, raw)


def _encoded_images(model: ServedModel, inp: RequestInput, raw: memoryview | None) -> list[bytes]:
    codec.check_datatype(inp, "BYTES")
    if len(inp.shape) not in (1, 2) or inp.shape[1:] not in ([], [1]):
        raise BadRequest(
            f"input {inp.name!r} has shape {codec.format_shape(inp.shape)}, expected [-1] or "
            f"[-1,1] (one encoded image per element)"
        )
    _batch(model, inp)
    return [_image(inp.name, i, e) for i, e in enumerate(codec.byte_elements(inp, raw))]


def _image(name: str, i: int, element: bytes | str) -> bytes:
    if isinstance(element, bytes):
        return element
    try:
        return base64.b64decode(element, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(
            f"input {name!r} element {i}: JSON BYTES elements must be base64-encoded images "
            f"(send raw bytes with the binary tensor data extension instead)"
        ) from None


def _outputs(model: ServedModel, parsed: ParsedRequest) -> list[Output]:
    req = parsed.header
    default = _flag(req.parameters.get("binary_data_output", False), "binary_data_output")
    name = model.meta.output_name
    if req.outputs is None:
        return [Output(default, 0)]
    if len(req.outputs) != 1 or req.outputs[0].name != name:
        got = ", ".join(repr(o.name[:64]) for o in req.outputs) or "none"
        raise BadRequest(
            f"requested outputs {got}; model {model.name!r} has one output, {name!r} "
            f"(FP32 [-1,{model.meta.num_classes}])"
        )
    params = req.outputs[0].parameters
    binary = _flag(params.get("binary_data", default), "binary_data")
    k = params.get("classification", 0)
    classes = model.meta.num_classes
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= classes:
        raise BadRequest(
            f"classification must be an integer in 1..{classes} (0: raw logits), got {k!r}"
        )
    return [Output(binary, k)]


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"parameter {name} must be a boolean, got {value!r}")
    return value


def _output(model: ServedModel, out: Output, scores: Scores) -> OutputTensor:
    name = model.meta.output_name
    if not out.classes:
        return OutputTensor(name, "FP32", scores.logits, out.binary)
    top = scores.top(out.classes)
    return OutputTensor(name, "BYTES", triton_classification(top, model.meta.labels), out.binary)


def triton_classification(scores: Scores, labels: tuple[str, ...]) -> np.ndarray:
    """Triton's classification output: object array ``[N, k]`` of ``b"<logit>:<index>:<label>"``,
    highest logit first (ties: lower index first), from the indices the runner ranked."""
    values = np.take_along_axis(scores.logits, scores.indices, axis=1)
    rows = [
        [f"{v:f}:{i}:{labels[i]}".encode() for v, i in zip(vals, idx, strict=True)]
        for vals, idx in zip(values.tolist(), scores.indices.tolist(), strict=True)
    ]
    out = np.empty((len(rows), scores.indices.shape[1]), dtype=object)
    out[:] = rows
    return out
