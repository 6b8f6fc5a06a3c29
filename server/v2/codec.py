"""The v2 wire format: a JSON header, optionally followed by raw tensors (binary tensor data
extension), in both directions. Knows datatypes and bytes, nothing about models.

Request body: ``<JSON header><binary input 0><binary input 1>...``; the
``Inference-Header-Content-Length`` header gives the JSON length (absent: the whole body is
JSON). An input whose ``parameters.binary_data_size`` is set takes that many bytes, in input
order. Numeric tensors are raw little-endian, row-major; a BYTES tensor is each element as a
4-byte little-endian length followed by its bytes (Triton's serialisation). Responses use the
same layout, with ``binary_data_size`` on each binary output.

Every function here raises :class:`BadRequest` (400) with a message naming what was expected
and what was received; nothing else escapes for any input bytes.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from pydantic import ValidationError

from contract.errors import BadRequest, BodyTooLarge, validation_problems
from server.v2.schemas import InferRequest, RequestInput

HEADER_LENGTH: Final = "Inference-Header-Content-Length"

#: The datatypes this server exchanges: UINT8 images and BYTES encoded images in, FP32 logits
#: and BYTES classifications out.
UINT8, FP32, BYTES = "UINT8", "FP32", "BYTES"
#: Every datatype the protocol defines, to tell "not a v2 datatype" from "not accepted here".
KNOWN_DATATYPES: Final = frozenset({
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
    "FP32", "FP64", "BF16", "BYTES",
})  # fmt: skip

_LENGTH: Final = struct.Struct("<I")


@dataclass(frozen=True)
class ParsedRequest:
    """A validated JSON header and the raw bytes of each binary input (by input index)."""

    header: InferRequest
    binary: dict[int, memoryview]


@dataclass(frozen=True)
class OutputTensor:
    """One output to send: numeric ``data`` of ``datatype``, or for BYTES an object array of
    ``bytes``; ``binary`` picks raw bytes after the header over JSON ``data``."""

    name: str
    datatype: str
    data: np.ndarray
    binary: bool


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def format_shape(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def check_datatype(inp: RequestInput, expected: str) -> None:
    """Raises BadRequest: ``inp.datatype`` is not a v2 datatype, or not ``expected``."""
    if inp.datatype not in KNOWN_DATATYPES:
        raise BadRequest(
            f"input {inp.name!r} has unknown datatype {inp.datatype[:32]!r}; "
            f"expected {expected} (v2 datatypes: {', '.join(sorted(KNOWN_DATATYPES))})"
        )
    if inp.datatype != expected:
        raise BadRequest(f"input {inp.name!r} has datatype {inp.datatype}, expected {expected}")


# -- requests --------------------------------------------------------------------------------


def parse_request(body: bytes, header_length: str | None, max_json_bytes: int) -> ParsedRequest:
    """Split ``body`` into the JSON header and the binary inputs, and validate the header.

    Raises:
        BadRequest: bad header length, invalid JSON (NaN/Infinity included), a header that is
            not an inference request, or binary data shorter or longer than declared.
        BodyTooLarge: the JSON part is longer than ``max_json_bytes`` (parsing it would cost
            up to ~25x its size in memory; binary tensors do not).
    """
    json_len = _json_length(header_length, len(body))
    if json_len > max_json_bytes:
        raise BodyTooLarge(
            f"the JSON part of this request is {json_len} bytes, over the limit of "
            f"{max_json_bytes} for JSON; send tensors as binary data (the binary tensor data "
            f"extension, {HEADER_LENGTH})"
        )
    view = memoryview(body)
    header = validate_header(_loads(view[:json_len], binary_follows=json_len < len(body)))
    return ParsedRequest(header, _split_binary(header, view[json_len:], header_length is not None))


def _json_length(value: str | None, body_len: int) -> int:
    if value is None:
        return body_len
    text = value.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise BadRequest(f"{HEADER_LENGTH} must be a non-negative integer, got {value[:32]!r}")
    n = int(text)
    if n > body_len:
        raise BadRequest(f"{HEADER_LENGTH} is {n} but the body has only {body_len} bytes")
    return n


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (tensor values must be finite numbers)")


def _loads(data: memoryview, *, binary_follows: bool) -> Any:
    try:
        return json.loads(bytes(data), parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("invalid JSON header: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity
        hint = ""
        if binary_follows or "Extra data" in str(e):
            hint = f" (binary tensor data needs the {HEADER_LENGTH} header)"
        raise BadRequest(f"invalid JSON header: {str(e)[:200]}{hint}") from None


def validate_header(obj: Any) -> InferRequest:
    """``obj`` (the decoded JSON header, or a gRPC request as the same dict) as an
    InferRequest. Raises BadRequest naming the first five problems."""
    try:
        return InferRequest.model_validate(obj)
    except ValidationError as e:
        parts = validation_problems(e.errors(include_url=False, include_input=False), "request")
        raise BadRequest("invalid inference request: " + "; ".join(parts)) from None


def binary_size(inp: RequestInput) -> int | None:
    """``parameters.binary_data_size`` of ``inp``, or None. Raises BadRequest if malformed."""
    size = inp.parameters.get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadRequest(f"input {inp.name!r}: binary_data_size must be a non-negative integer")
    if inp.data is not None:
        raise BadRequest(f"input {inp.name!r} has both 'data' and binary_data_size")
    return size


def _split_binary(req: InferRequest, rest: memoryview, has_header: bool) -> dict[int, memoryview]:
    out: dict[int, memoryview] = {}
    offset = 0
    for i, inp in enumerate(req.inputs):
        size = binary_size(inp)
        if size is None:
            continue
        if not has_header:
            raise BadRequest(
                f"input {inp.name!r} has binary_data_size but the request has no "
                f"{HEADER_LENGTH} header"
            )
        if offset + size > len(rest):
            raise BadRequest(
                f"binary data of input {inp.name!r} is truncated: binary_data_size is {size} "
                f"bytes but only {len(rest) - offset} bytes follow"
            )
        out[i] = rest[offset : offset + size]
        offset += size
    if offset != len(rest):
        raise BadRequest(
            f"body has {len(rest) - offset} bytes after the JSON header and binary inputs "
            f"(expected {offset} bytes of binary data, got {len(rest)})"
        )
    return out


# -- tensors ---------------------------------------------------------------------------------


def uint8_tensor(inp: RequestInput, raw: memoryview | None) -> np.ndarray:
    """The UINT8 tensor of ``inp``, shape ``inp.shape``, C-contiguous.

    JSON data may be flat or nested (row-major); values must be integers in 0..255.

    Raises:
        BadRequest: no data, wrong element or byte count, wrong value types, out of range.
    """
    count = element_count(inp.shape)
    if raw is not None:
        if len(raw) != count:
            raise BadRequest(
                f"input {inp.name!r}: binary_data_size is {len(raw)} bytes, expected {count} "
                f"(shape {format_shape(inp.shape)} x UINT8 1 byte(s))"
            )
        return np.frombuffer(raw, dtype=np.uint8).reshape(inp.shape)
    arr = _json_array(inp)
    if arr.size != count:
        raise BadRequest(
            f"input {inp.name!r}: shape {format_shape(inp.shape)} needs {count} elements, "
            f"data has {arr.size}"
        )
    if arr.size and arr.dtype.kind not in "iu":
        raise BadRequest(
            f"input {inp.name!r} is {inp.datatype}: JSON data holds "
            f"{_KIND_NAMES.get(arr.dtype.kind, 'values of the wrong type')}, expected integers"
        )
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise BadRequest(
            f"input {inp.name!r} is {inp.datatype}: values must be in 0..255, got "
            f"{arr.min()}..{arr.max()}"
        )
    return arr.astype(np.uint8).reshape(inp.shape)


def _json_array(inp: RequestInput) -> np.ndarray:
    if inp.data is None:
        raise BadRequest(f"input {inp.name!r} has neither 'data' nor binary_data_size")
    if not isinstance(inp.data, list):
        raise BadRequest(f"input {inp.name!r}: 'data' must be a list")
    leaf: Any = inp.data
    while isinstance(leaf, list) and leaf:  # refuse objects before numpy builds an array of them
        leaf = leaf[0]
    kind = {dict: "objects", str: "strings", type(None): "nulls"}.get(type(leaf))
    if kind is not None:
        raise BadRequest(
            f"input {inp.name!r} is {inp.datatype}: JSON data holds {kind}, expected integers"
        )
    try:
        return np.asarray(inp.data)
    except (ValueError, TypeError, RecursionError):
        raise BadRequest(
            f"input {inp.name!r}: 'data' must be a flat or evenly nested list of numbers "
            "(got lists of uneven length, or nesting deeper than 64 levels)"
        ) from None


_KIND_NAMES: Final = {
    "b": "booleans",
    "f": "non-integer numbers",
    "U": "strings",
    "O": "nulls, lists of uneven depth, mixed types or integers out of range",
}


def byte_elements(inp: RequestInput, raw: memoryview | None) -> list[bytes | str]:
    """The elements of a BYTES input, row-major: ``bytes`` from binary data, ``str`` from JSON.

    Raises:
        BadRequest: element count differs from ``inp.shape``, truncated length prefixes,
            non-string JSON values.
    """
    count = element_count(inp.shape)
    elements: list[bytes | str]
    if raw is not None:
        elements = list(_split_bytes(inp.name, raw, count))
    else:
        if inp.data is None:
            raise BadRequest(f"input {inp.name!r} has neither 'data' nor binary_data_size")
        elements = list(_flatten_strings(inp.name, inp.data, count))
    if len(elements) != count:
        raise BadRequest(
            f"input {inp.name!r}: shape {format_shape(inp.shape)} needs {count} elements, "
            f"data has {len(elements)}"
        )
    return elements


def _split_bytes(name: str, raw: memoryview, limit: int) -> list[bytes]:
    out: list[bytes] = []
    pos = 0
    while pos < len(raw):
        if len(out) == limit:
            raise BadRequest(f"input {name!r}: binary data holds more than {limit} elements")
        if pos + 4 > len(raw):
            raise BadRequest(f"input {name!r}: BYTES element {len(out)} has a truncated length")
        (size,) = _LENGTH.unpack_from(raw, pos)
        pos += 4
        if pos + size > len(raw):
            raise BadRequest(
                f"input {name!r}: BYTES element {len(out)} declares {size} bytes but only "
                f"{len(raw) - pos} remain"
            )
        out.append(bytes(raw[pos : pos + size]))
        pos += size
    return out


def _flatten_strings(name: str, data: Any, limit: int) -> list[str]:
    out: list[str] = []

    def walk(node: Any, depth: int) -> None:
        if isinstance(node, str):
            if len(out) == limit:
                raise BadRequest(f"input {name!r}: 'data' holds more than {limit} elements")
            out.append(node)
        elif isinstance(node, list) and depth < 32:
            for x in node:
                walk(x, depth + 1)
        else:
            raise BadRequest(f"input {name!r} is BYTES: JSON 'data' must be a list of strings")

    walk(data, 0)
    return out


# -- responses -------------------------------------------------------------------------------


def encode_response(
    model_name: str, model_version: str, request_id: str | None, outputs: Sequence[OutputTensor]
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length (to send as
    ``Inference-Header-Content-Length``); None means the body is plain JSON."""
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        header["id"] = request_id
    entries, chunks = [], []
    for out in outputs:
        entry: dict[str, Any] = {
            "name": out.name,
            "datatype": out.datatype,
            "shape": list(out.data.shape),
        }
        if out.binary:
            raw = raw_bytes(out)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif out.datatype == BYTES:
            entry["data"] = [b.decode() for b in out.data.reshape(-1).tolist()]
        else:
            entry["data"] = out.data.reshape(-1).tolist()
        entries.append(entry)
    header["outputs"] = entries
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if not chunks:
        return text, None
    return b"".join([text, *chunks]), len(text)


def raw_bytes(out: OutputTensor) -> bytes:
    """``out`` as raw bytes: FP32 little-endian row-major, BYTES as Triton's serialisation."""
    if out.datatype == BYTES:
        items = out.data.reshape(-1).tolist()
        return b"".join(_LENGTH.pack(len(b)) + b for b in items)
    return np.ascontiguousarray(out.data, dtype="<f4").tobytes()  # FP32, little-endian
