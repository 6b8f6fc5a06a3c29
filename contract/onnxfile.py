"""Read an ONNX file's ``metadata_props`` without loading the model or importing ``onnx``.

Discovery needs each file's metadata (its precision, to know which files can have a bf16
variant) before any runtime loads it; parsing the protobuf's top-level fields is enough, and
the weights (the ``graph`` field, tens of MB) are skipped by their length without reading them.
"""

from __future__ import annotations

import mmap
from pathlib import Path

# ModelProto field numbers (onnx.proto3) and protobuf wire types.
_METADATA_PROPS = 14
_KEY, _VALUE = 1, 2
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class OnnxFileError(ValueError):
    """Not a well-formed ONNX protobuf."""


def _varint(buf: mmap.mmap | bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise OnnxFileError("truncated or malformed varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: mmap.mmap | bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field in ``buf[start:end]``."""
    out, pos = [], start
    while pos < end:
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            _, pos = _varint(buf, pos)
        elif wire == _I64:
            pos += 8
        elif wire == _I32:
            pos += 4
        elif wire == _LEN:
            length, pos = _varint(buf, pos)
            out.append((number, pos, pos + length))
            pos += length
        else:
            raise OnnxFileError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise OnnxFileError("field runs past the end of the file")
    return out


def read_metadata_props(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of the ONNX model at ``path`` (key -> value).

    Raises:
        OSError: the file cannot be read.
        OnnxFileError: the file is not a well-formed ONNX protobuf.
    """
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        props: dict[str, str] = {}
        for number, start, end in _fields(buf, 0, len(buf)):
            if number != _METADATA_PROPS:
                continue
            entry = {n: bytes(buf[s:e]).decode() for n, s, e in _fields(buf, start, end)}
            props[entry.get(_KEY, "")] = entry.get(_VALUE, "")
        return props
