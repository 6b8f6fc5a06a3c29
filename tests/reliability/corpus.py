"""The hostile and unusual inputs, generated in memory (no binary blobs in the repository).

Each :class:`Case` is one request and the answer it must get. Broken or hostile input must get
a 4xx with the server's ``{"error", "code"}`` body; valid-but-unusual images must be served
(200). See docs/RELIABILITY.md for why the unusual images are in the corpus.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from tests.imagegen import encode, jpeg, photo_like

JPEG_CT = {"content-type": "image/jpeg"}
OCTET = {"content-type": "application/octet-stream"}


@dataclass(frozen=True)
class Case:
    """One request. ``status`` 200 means it must be served; otherwise ``code`` is exact and
    ``fragment`` must appear in the error message."""

    id: str
    path: str
    status: int
    code: str = ""
    fragment: str = ""
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    data: dict[str, str] | None = None
    method: str = "POST"


# -- image builders --------------------------------------------------------------------------


def png(img: Image.Image, **kw: object) -> bytes:
    return encode(img, "PNG", **kw)


def png_chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width x height`` (8-bit greyscale): a decompression
    bomb if it were decoded, a zero-size image if a side is 0."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    sig = b"\x89PNG\r\n\x1a\n"
    return sig + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def gif_declaring(width: int, height: int) -> bytes:
    """A minimal GIF whose screen and frame declare ``width x height``."""
    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00" * 3 + b"\xff" * 3
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return head + frame + b"\x02\x02\x44\x01\x00" + b"\x3b"


def strip(width: int, height: int) -> bytes:
    return png(Image.new("RGB", (width, height), (120, 30, 200)))


def bad_png_crc() -> bytes:
    data = bytearray(png(photo_like(64, 64, seed=4)))
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4 : idat])[0]
    data[idat + 4 + length] ^= 0xFF  # first byte of the IDAT chunk's CRC
    return bytes(data)


def _scan_start(data: bytes) -> int:
    sos = data.index(b"\xff\xda")
    return sos + 2 + int(struct.unpack(">H", data[sos + 2 : sos + 4])[0])


def corrupt_jpeg_entropy() -> bytes:
    """A JPEG with 2000 bytes of its entropy-coded scan inverted: libjpeg stops with an error."""
    data = bytearray(jpeg(256, 256, seed=5))
    at = _scan_start(data) + (len(data) - _scan_start(data)) // 3
    data[at : at + 2000] = bytes(255 - b for b in data[at : at + 2000])
    return bytes(data)


def noisy_jpeg_entropy() -> bytes:
    """A JPEG whose whole scan is random bytes without markers: syntactically valid Huffman
    data that libjpeg (like every browser) decodes to garbage with warnings only. JPEG has no
    checksum, so this is undetectable; it is served (see docs/RELIABILITY.md)."""
    data = bytearray(jpeg(256, 256, seed=5))
    start = _scan_start(data)
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 0xFF, len(data) - start - 2, dtype=np.uint8).tobytes()
    data[start:-2] = noise.replace(b"\xff", b"\x00")
    return bytes(data)


def jpeg_many_scans(scans: int = 150) -> bytes:
    """A progressive JPEG whose last scan is repeated until it holds ``scans`` scans: each
    extra scan is one more pass of the decoder over the whole image."""
    buf = io.BytesIO()
    photo_like(256, 192, seed=3).save(buf, "JPEG", progressive=True, quality=85)
    data = buf.getvalue()
    last = data.rindex(b"\xff\xda")
    present = data.count(b"\xff\xda")
    return data[:-2] + data[last:-2] * (scans - present) + b"\xff\xd9"


def tiff_long_strip_table(strips: int = 20_000) -> bytes:
    """An 8x8 greyscale TIFF (one strip of 8 rows) whose strip tables hold ``strips`` entries."""
    entries = [  # (tag, type, count, value or offset): SHORT 3, LONG 4
        (256, 3, 1, 8),
        (257, 3, 1, 8),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, strips, 0),
        (277, 3, 1, 1),
        (278, 3, 1, 8),
        (279, 4, strips, 0),
    ]
    ifd_at = 8
    ifd_size = 2 + 12 * len(entries) + 4
    offsets_at = ifd_at + ifd_size
    counts_at = offsets_at + 4 * strips
    pixels_at = counts_at + 4 * strips
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_at) + struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:
        if tag == 273:
            value = offsets_at
        elif tag == 279:
            value = counts_at
        out += struct.pack("<HHII", tag, kind, count, value)
    out += struct.pack("<I", 0)
    out += struct.pack(f"<{strips}I", *([pixels_at] * strips))
    out += struct.pack(f"<{strips}I", *([64] + [0] * (strips - 1)))
    out += bytes(range(64))
    return bytes(out)


def png_tiny_chunks(target: int = 4 << 20) -> bytes:
    """A 64x64 greyscale PNG preceded by about ``target`` bytes of empty IDAT chunks."""
    raw = b"".join(b"\x00" + bytes(64) for _ in range(64))
    empty = png_chunk(b"IDAT", b"")
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0))
    return (
        b"\x89PNG\r\n\x1a\n"
        + ihdr
        + empty * (target // len(empty))
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def multipart_without_file() -> tuple[bytes, dict[str, str]]:
    body = b'--b0undary\r\nContent-Disposition: form-data; name="note"\r\n\r\nno image\r\n--b0undary--\r\n'
    return body, {"content-type": "multipart/form-data; boundary=b0undary"}


def animated_gif() -> bytes:
    frames = [photo_like(96, 80, seed=s).convert("P") for s in range(4)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def multipage_tiff() -> bytes:
    pages = [photo_like(120, 90, seed=s) for s in range(3)]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    return buf.getvalue()


def png16() -> bytes:
    arr = (np.arange(100 * 80, dtype=np.uint16).reshape(80, 100) * 8).astype(np.uint16)
    return png(Image.fromarray(arr))  # mode I;16: a 16-bit greyscale PNG


def cmyk_jpeg() -> bytes:
    return encode(photo_like(160, 120, seed=6).convert("CMYK"), "JPEG", quality=90)


def palette_png_transparent() -> bytes:
    img = photo_like(100, 100, seed=7).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return png(img, transparency=0)


def webp() -> bytes:
    return encode(photo_like(128, 96, seed=8), "WEBP", quality=80)


SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
HTML = b"<!DOCTYPE html><html><body><h1>not an image</h1><script>alert(1)</script></body></html>"


# -- the corpus ------------------------------------------------------------------------------


def predict_cases() -> Iterator[Case]:
    ok = jpeg(320, 240, seed=1)
    png_ok = png(photo_like(200, 150, seed=2))
    inv, bad, too_big, media = (
        "invalid_image",
        "bad_request",
        "image_too_large",
        "unsupported_media_type",
    )
    yield Case("empty-body", "/predict", 400, bad, "empty body", b"", JPEG_CT)
    # Structure that costs far more than the pixels: refused before anything is decoded.
    yield Case(
        "jpeg-150-scans",
        "/predict",
        400,
        inv,
        "150 scans (limit 100; a progressive",
        jpeg_many_scans(),
        JPEG_CT,
    )
    yield Case(
        "tiff-long-strip-table",
        "/predict",
        400,
        inv,
        "20000 strips declared, a 8x8 image needs 1",
        tiff_long_strip_table(),
        OCTET,
    )
    yield Case("png-tiny-chunks", "/predict", 400, inv, "chunks in", png_tiny_chunks(), OCTET)
    yield Case("empty-body-no-type", "/predict", 400, bad, "empty body", b"")
    yield Case(
        "text-as-jpeg", "/predict", 400, inv, "not a recognised image", b"hello, world\n", JPEG_CT
    )
    yield Case(
        "text-plain", "/predict", 415, media, "text/plain", b"hello", {"content-type": "text/plain"}
    )
    yield Case("html", "/predict", 415, media, "text/html", HTML, {"content-type": "text/html"})
    yield Case("html-as-octets", "/predict", 400, inv, "not a recognised image", HTML, OCTET)
    yield Case(
        "json-type",
        "/predict",
        415,
        media,
        "application/json",
        ok,
        {"content-type": "application/json"},
    )
    yield Case(
        "form-urlencoded",
        "/predict",
        415,
        media,
        "x-www-form-urlencoded",
        b"a=b",
        {"content-type": "application/x-www-form-urlencoded"},
    )
    for cut in (2, 20, 200, len(ok) // 2, len(ok) - 100):
        yield Case(f"jpeg-cut-{cut}", "/predict", 400, inv, "JPEG", ok[:cut], JPEG_CT)
    for cut in (8, 30, 100, len(png_ok) // 2, len(png_ok) - 20, len(png_ok) - 12):
        yield Case(
            f"png-cut-{cut}",
            "/predict",
            400,
            inv,
            "PNG",
            png_ok[:cut],
            {"content-type": "image/png"},
        )
    yield Case(
        "jpeg-corrupt-entropy",
        "/predict",
        400,
        inv,
        "broken data stream",
        corrupt_jpeg_entropy(),
        JPEG_CT,
    )
    yield Case(
        "jpeg-entropy-noise-undetectable",
        "/predict",
        200,
        content=noisy_jpeg_entropy(),
        headers=JPEG_CT,
    )
    yield Case(
        "png-bad-crc", "/predict", 400, inv, "bad CRC", bad_png_crc(), {"content-type": "image/png"}
    )
    yield Case("png-zero-width", "/predict", 400, inv, "", png_declaring(0, 10), OCTET)
    yield Case("gif-zero-size", "/predict", 400, inv, "", gif_declaring(0, 0), OCTET)
    yield Case("strip-65535x1", "/predict", 413, too_big, "aspect ratio", strip(65535, 1), OCTET)
    yield Case("strip-1x65535", "/predict", 413, too_big, "aspect ratio", strip(1, 65535), OCTET)
    yield Case(
        "bomb-png-50000",
        "/predict",
        413,
        too_big,
        "2500000000 pixels",
        png_declaring(50000, 50000),
        OCTET,
    )
    yield Case(
        "bomb-gif-50000",
        "/predict",
        413,
        too_big,
        "2500000000 pixels",
        gif_declaring(50000, 50000),
        OCTET,
    )
    yield Case(
        "bomb-png-7000",
        "/predict",
        413,
        too_big,
        "limit 40000000",
        png_declaring(7000, 7000),
        OCTET,
    )
    yield Case("svg", "/predict", 415, media, "SVG", SVG, {"content-type": "image/svg+xml"})
    yield Case("svg-as-octets", "/predict", 415, media, "SVG", SVG, OCTET)
    yield Case(
        "pdf", "/predict", 415, media, "application/pdf", PDF, {"content-type": "application/pdf"}
    )
    yield Case("pdf-as-jpeg", "/predict", 415, media, "PDF", PDF, JPEG_CT)
    yield Case("multipart-no-file", "/predict", 400, bad, "no file part", *multipart_without_file())
    yield Case(
        "multipart-100-files",
        "/predict",
        400,
        bad,
        "malformed multipart body: Too many files. Maximum number of files is 32",
        files=[("file", (f"{i}.jpg", ok, "image/jpeg")) for i in range(100)],
    )
    yield Case(
        "multipart-bad-boundary",
        "/predict",
        400,
        bad,
        "malformed multipart body",
        b"--nope\r\n\r\n",
        {"content-type": "multipart/form-data; boundary=zzz"},
    )
    yield Case(
        "multipart-one-bad-image",
        "/predict",
        400,
        inv,
        "",
        files=[("file", ("a.jpg", ok, "image/jpeg")), ("file", ("b.jpg", b"junk", "image/jpeg"))],
    )
    yield Case(
        "top-k-negative", "/predict?top_k=-1", 422, "invalid_parameter", "top_k", ok, JPEG_CT
    )
    yield Case("top-k-zero", "/predict?top_k=0", 422, "invalid_parameter", "top_k", ok, JPEG_CT)
    yield Case(
        "top-k-huge",
        "/predict?top_k=99999999999999999999999",
        422,
        "invalid_parameter",
        "top_k",
        ok,
        JPEG_CT,
    )
    yield Case("top-k-float", "/predict?top_k=2.5", 422, "invalid_parameter", "top_k", ok, JPEG_CT)
    yield Case(
        "unknown-model", "/predict/resnet1000", 404, "unknown_model", "unknown model", ok, JPEG_CT
    )
    yield Case(
        "model-param-traversal",
        "/predict?model=../../etc/passwd",
        404,
        "unknown_model",
        "unknown model",
        ok,
        JPEG_CT,
    )
    yield Case(
        "model-path-dotdot", "/predict/%2e%2e", 404, "unknown_model", "unknown model", ok, JPEG_CT
    )
    yield Case(
        "model-path-encoded-slash",
        "/predict/..%2F..%2Fetc%2Fpasswd",
        404,
        "not_found",
        "",
        ok,
        JPEG_CT,
    )
    yield Case(
        "model-path-double-encoded",
        "/predict/%252e%252e%252fetc",
        404,
        "unknown_model",
        "unknown model",
        ok,
        JPEG_CT,
    )
    yield Case(
        "model-nul",
        "/predict?model=resnet18%00",
        404,
        "unknown_model",
        "unknown model",
        ok,
        JPEG_CT,
    )
    yield Case(
        "model-long", "/predict/" + "a" * 4000, 404, "unknown_model", "unknown model", ok, JPEG_CT
    )
    # Valid but unusual: served.
    yield Case(
        "one-by-one",
        "/predict",
        200,
        content=png(Image.new("RGB", (1, 1), (9, 99, 199))),
        headers=OCTET,
    )
    yield Case(
        "animated-gif",
        "/predict",
        200,
        content=animated_gif(),
        headers={"content-type": "image/gif"},
    )
    yield Case(
        "multipage-tiff",
        "/predict",
        200,
        content=multipage_tiff(),
        headers={"content-type": "image/tiff"},
    )
    yield Case(
        "png-16-bit", "/predict", 200, content=png16(), headers={"content-type": "image/png"}
    )
    yield Case("cmyk-jpeg", "/predict", 200, content=cmyk_jpeg(), headers=JPEG_CT)
    yield Case(
        "palette-png-transparency",
        "/predict",
        200,
        content=palette_png_transparent(),
        headers={"content-type": "image/png"},
    )
    yield Case("webp", "/predict", 200, content=webp(), headers={"content-type": "image/webp"})


def v2_json(inputs: list[dict[str, object]], **extra: object) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def v2_cases() -> Iterator[Case]:
    url = "/v2/models/resnet18/infer"
    js = {"content-type": "application/json"}
    b64 = base64.b64encode(jpeg(120, 100, seed=3)).decode()
    img = {"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [b64]}
    bad = "bad_request"
    yield Case("v2-empty", url, 400, bad, "", b"", js)
    yield Case("v2-not-json", url, 400, bad, "", b"{not json", js)
    yield Case("v2-html", url, 400, bad, "", HTML, js)
    yield Case(
        "v2-nan",
        url,
        400,
        bad,
        "",
        b'{"inputs":[{"name":"images","shape":[1,224,224,3],"datatype":"UINT8","data":[NaN]}]}',
        js,
    )
    yield Case(
        "v2-infinity",
        url,
        400,
        bad,
        "",
        b'{"inputs":[{"name":"images","shape":[1,1],"datatype":"FP32","data":[Infinity]}]}',
        js,
    )
    yield Case(
        "v2-wrong-type",
        url,
        400,
        bad,
        "",
        v2_json(
            [
                {
                    "name": "images",
                    "shape": [1, 224, 224, 3],
                    "datatype": "UINT8",
                    "data": ["x"] * (224 * 224 * 3),
                }
            ]
        ),
        js,
    )
    yield Case(
        "v2-wrong-datatype",
        url,
        400,
        bad,
        "",
        v2_json(
            [
                {
                    "name": "images",
                    "shape": [1, 224, 224, 3],
                    "datatype": "FP32",
                    "data": [0.5] * (224 * 224 * 3),
                }
            ]
        ),
        js,
    )
    yield Case(
        "v2-out-of-range",
        url,
        400,
        bad,
        "",
        v2_json(
            [
                {
                    "name": "images",
                    "shape": [1, 224, 224, 3],
                    "datatype": "UINT8",
                    "data": [300] * (224 * 224 * 3),
                }
            ]
        ),
        js,
    )
    yield Case(
        "v2-shape-mismatch",
        url,
        400,
        bad,
        "",
        v2_json(
            [{"name": "images", "shape": [1, 224, 224, 3], "datatype": "UINT8", "data": [1, 2, 3]}]
        ),
        js,
    )
    yield Case(
        "v2-huge-shape",
        url,
        400,
        bad,
        "",
        v2_json([{"name": "images", "shape": [2**62, 2**62], "datatype": "UINT8", "data": [1]}]),
        js,
    )
    yield Case(
        "v2-negative-shape",
        url,
        400,
        bad,
        "",
        v2_json([{"name": "images", "shape": [-1, 224, 224, 3], "datatype": "UINT8", "data": [1]}]),
        js,
    )
    yield Case("v2-no-inputs", url, 400, bad, "", v2_json([]), js)
    yield Case("v2-inputs-not-list", url, 400, bad, "", b'{"inputs": 5}', js)
    yield Case("v2-nested-100k", url, 400, bad, "", b"[" * 100_000 + b"]" * 100_000, js)
    yield Case(
        "v2-nested-object-100k", url, 400, bad, "", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, js
    )
    yield Case(
        "v2-nested-in-data",
        url,
        400,
        bad,
        "",
        b'{"inputs":[{"name":"images","shape":[1],'
        b'"datatype":"UINT8","data":' + b"[" * 50_000 + b"]" * 50_000 + b"}]}",
        js,
    )
    yield Case(
        "v2-image-not-base64",
        url,
        400,
        bad,
        "",
        v2_json([{**img, "data": ["!!!not base64!!!"]}]),
        js,
    )
    yield Case(
        "v2-image-not-an-image",
        url,
        400,
        "invalid_image",
        "",
        v2_json([{**img, "data": [base64.b64encode(b"hello").decode()]}]),
        js,
    )
    yield Case(
        "v2-image-svg",
        url,
        415,
        "unsupported_media_type",
        "SVG",
        v2_json([{**img, "data": [base64.b64encode(SVG).decode()]}]),
        js,
    )
    yield Case(
        "v2-image-bomb",
        url,
        413,
        "image_too_large",
        "2500000000 pixels",
        v2_json([{**img, "data": [base64.b64encode(png_declaring(50000, 50000)).decode()]}]),
        js,
    )
    yield Case(
        "v2-classification-negative",
        url,
        400,
        bad,
        "",
        v2_json([img], outputs=[{"name": "logits", "parameters": {"classification": -3}}]),
        js,
    )
    yield Case(
        "v2-classification-huge",
        url,
        400,
        bad,
        "",
        v2_json([img], outputs=[{"name": "logits", "parameters": {"classification": 10**30}}]),
        js,
    )
    header = v2_json(
        [
            {
                "name": "images",
                "shape": [1, 224, 224, 3],
                "datatype": "UINT8",
                "parameters": {"binary_data_size": 224 * 224 * 3},
            }
        ]
    )
    hl = "Inference-Header-Content-Length"
    yield Case(
        "v2-binary-short",
        url,
        400,
        bad,
        "",
        header + b"\x00" * 100,
        {"content-type": "application/octet-stream", hl: str(len(header))},
    )
    yield Case(
        "v2-binary-header-too-long",
        url,
        400,
        bad,
        "",
        header,
        {"content-type": "application/octet-stream", hl: str(len(header) + 1000)},
    )
    yield Case(
        "v2-binary-header-negative",
        url,
        400,
        bad,
        "",
        header,
        {"content-type": "application/octet-stream", hl: "-5"},
    )
    yield Case(
        "v2-binary-header-junk",
        url,
        400,
        bad,
        "",
        header,
        {"content-type": "application/octet-stream", hl: "12abc"},
    )
    yield Case(
        "v2-unknown-model",
        "/v2/models/resnet1000/infer",
        404,
        "unknown_model",
        "unknown model",
        v2_json([img]),
        js,
    )
    yield Case(
        "v2-traversal-dotdot",
        "/v2/models/%2e%2e/infer",
        404,
        "unknown_model",
        "unknown model",
        v2_json([img]),
        js,
    )
    yield Case(
        "v2-traversal-slash",
        "/v2/models/..%2F..%2Fetc%2Fpasswd/infer",
        404,
        "not_found",
        "",
        v2_json([img]),
        js,
    )
    yield Case(
        "v2-unknown-version",
        "/v2/models/resnet18/versions/2/infer",
        404,
        "unknown_model",
        "",
        v2_json([img]),
        js,
    )
    yield Case("v2-metadata-traversal", "/v2/models/%2e%2e", 404, "unknown_model", "", method="GET")
    yield Case("v2-ok-image-bytes", url, 200, content=v2_json([img]), headers=js)


def all_cases() -> list[Case]:
    return [*predict_cases(), *v2_cases()]
