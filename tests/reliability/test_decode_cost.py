"""The cost of a decode is bounded, not only its size: each image decodes in a worker process
held to a CPU budget (a base plus an amount per declared megapixel) and a memory budget, and
killed past either, or as soon as its request has been answered. Real server processes, real
files; the budgets are set small here so that ordinary test images cross them."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ServerProcess, start_server
from tests.imagegen import jpeg
from tests.reliability.helpers import assert_error, metric

PNG_CT = {"content-type": "image/png"}
JPEG_CT = {"content-type": "image/jpeg"}


def gradient_png(width: int, height: int, mode: str = "RGB") -> bytes:
    """A smooth image: a few kB on the wire, ``width * height`` pixels to inflate and resize."""
    row = np.linspace(0, 255, width, dtype=np.float32)
    plane = (row[None, :] + np.linspace(0, 64, height, dtype=np.float32)[:, None]) % 256
    channels = {"RGB": 3, "RGBA": 4}[mode]
    pixels = np.repeat(plane.astype(np.uint8)[:, :, None], channels, axis=2)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def descendants_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of every live descendant of ``pid``: its decode workers."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        cpu[child] = (int(fields[11]) + int(fields[12])) / 100
    below, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - below
        below |= frontier
    return sum(cpu[c] for c in below)


def post(srv: ServerProcess, data: bytes, headers: dict[str, str]) -> httpx.Response:
    with srv.new_client() as c:
        return c.post("/predict/resnet18", content=data, headers=headers)


@pytest.fixture(scope="module")
def tight(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose decodes get 30 ms of CPU plus 2 ms per megapixel, and 64 MiB."""
    srv = start_server(
        model_dir,
        tmp_path_factory.mktemp("tight"),
        models="resnet18",
        warmup_batch_sizes="1",
        preprocess_threads=2,
        decode_cpu_base_ms=30,
        decode_cpu_ms_per_mpixel=2,
        decode_memory_bytes=64 << 20,
    )
    yield srv
    srv.stop()


def test_a_decode_past_its_cpu_budget_is_killed_and_answered_422(tight: ServerProcess) -> None:
    before = metric(tight, "resnet_requests_total", model="resnet18", outcome="image_too_costly")
    start = time.monotonic()
    r = post(tight, gradient_png(4000, 3000), PNG_CT)  # ~0.2 s of CPU to inflate and resize
    assert_error(
        r,
        422,
        "image_too_costly",
        "image decode passed its CPU budget of 0.05 s (12.0 MP declared; 0.03 s + "
        "0.002 s per megapixel): the file's structure costs more than its pixels "
        "justify",
    )
    assert time.monotonic() - start < 5
    after = metric(tight, "resnet_requests_total", model="resnet18", outcome="image_too_costly")
    assert after == before + 1
    assert metric(tight, "resnet_decode_workers_killed_total", reason="cpu") >= 1
    r = post(tight, jpeg(400, 300, seed=1), JPEG_CT)  # its worker was replaced: served
    assert r.status_code == 200, r.text


def test_a_decode_past_its_memory_budget_is_answered_422(tight: ServerProcess) -> None:
    # 36 MP of RGBA is 144 MiB for the decoded image alone, more than the worker may add.
    r = post(tight, gradient_png(6000, 6000, "RGBA"), PNG_CT)
    assert_error(
        r, 422, "image_too_costly", "image decode needed more than its memory budget of 64 MiB"
    )
    assert metric(tight, "resnet_decode_workers_killed_total", reason="memory") == 1.0
    assert post(tight, jpeg(400, 300, seed=2), JPEG_CT).status_code == 200


def test_ordinary_photos_are_served_while_costly_files_are_in_flight(
    tight: ServerProcess,
) -> None:
    costly = gradient_png(4000, 3000)
    ordinary = jpeg(500, 375, seed=3)
    with ThreadPoolExecutor(5) as pool:
        hostile = [pool.submit(post, tight, costly, PNG_CT) for _ in range(4)]
        time.sleep(0.1)
        start = time.monotonic()
        served = pool.submit(post, tight, ordinary, JPEG_CT).result()
        elapsed = time.monotonic() - start
        refused = [f.result() for f in hostile]
    assert served.status_code == 200, served.text
    assert elapsed < 2.0, f"an ordinary photo waited {elapsed:.2f} s behind costly files"
    for r in refused:
        assert_error(r, 422, "image_too_costly", "passed its CPU budget")


def test_structure_is_refused_before_any_cost(tight: ServerProcess) -> None:
    from tests.reliability.corpus import jpeg_many_scans, png_tiny_chunks, tiff_long_strip_table

    cpu = descendants_cpu_s(tight.proc.pid)
    for data, fragment in [
        (jpeg_many_scans(), "cannot decode JPEG image: 150 scans (limit 100;"),
        (tiff_long_strip_table(), "20000 strips declared, a 8x8 image needs 1"),
        (png_tiny_chunks(), "more than 4160 chunks in 4194384 bytes"),
    ]:
        assert_error(
            post(tight, data, {"content-type": "application/octet-stream"}),
            400,
            "invalid_image",
            fragment,
        )
    # All three together cost the workers far less than one budget-length decode.
    assert descendants_cpu_s(tight.proc.pid) - cpu < 0.5


def test_nothing_keeps_running_after_the_answer(model_dir: Path, tmp_path: Path) -> None:
    # Default budgets (this 36 MP decode is within them), a deadline it cannot meet.
    srv = start_server(
        model_dir,
        tmp_path,
        models="resnet18",
        warmup_batch_sizes="1",
        preprocess_threads=1,
        queue_timeout_ms=100,
    )
    try:
        slow = gradient_png(6000, 6000)  # 0.3-1 s of CPU to decode and resize
        start = time.monotonic()
        r = post(srv, slow, PNG_CT)
        assert_error(r, 503, "queue_timeout", "not decoded and queued within 0.1 s")
        assert time.monotonic() - start < 3
        # The worker was killed with the answer: its CPU time stops growing.
        cpu = descendants_cpu_s(srv.proc.pid)
        time.sleep(1.0)
        assert descendants_cpu_s(srv.proc.pid) - cpu < 0.1
        assert metric(srv, "resnet_decode_workers_killed_total", reason="abandoned") == 1.0
        assert post(srv, jpeg(400, 300, seed=4), JPEG_CT).status_code == 200
    finally:
        srv.stop()


def test_only_files_cheap_by_construction_decode_in_the_thread() -> None:
    """``decode_isolation=auto``: small JPEG/PNG/WebP/GIF files of few pixels skip the worker
    (their worst case is inside their budget); anything larger, or another format, does not."""
    from contract.images.decode import DecodeLimits
    from server.flow.decodepool import decodes_inline
    from tests.reliability.corpus import jpeg_many_scans, tiff_long_strip_table

    limits = DecodeLimits()
    photo = Image.open(io.BytesIO(jpeg(500, 375, seed=1)))
    assert decodes_inline(jpeg(500, 375, seed=1), limits)
    for fmt in ("PNG", "WEBP", "GIF"):
        buf = io.BytesIO()
        photo.save(buf, fmt)
        assert decodes_inline(buf.getvalue(), limits), fmt
    buf = io.BytesIO()
    photo.save(buf, "BMP")
    assert not decodes_inline(buf.getvalue(), limits)  # a Python RLE decoder: a worker
    assert not decodes_inline(tiff_long_strip_table(), limits)  # TIFF: always a worker
    assert not decodes_inline(gradient_png(2000, 1001), limits)  # over 2 MP declared
    assert not decodes_inline(jpeg(500, 375) + b"\0" * (1 << 20), limits)  # over 1 MiB
    assert decodes_inline(jpeg_many_scans(), limits)  # small: refused in the thread, at once
    assert not decodes_inline(b"not an image", limits)  # a worker reports the error
