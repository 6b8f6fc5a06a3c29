"""After :func:`contract.images.decode.preload`, no image makes Pillow import its plugins.

A format Pillow has not imported yet makes ``Image.open`` call ``Image.init()``, which imports
every plugin it has: 84 ms on a 2-core AMD EPYC, charged to the first request of that format
(and past a decode worker's 30 ms header budget: the tight-budget TIFF test failed on that
machine). Each case runs in a fresh interpreter, where nothing has been imported yet.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from contract.images.decode import DECODER_MODULES, SUPPORTED_FORMATS, preload
from tests.imagegen import encode, photo_like

_CHILD = """
import sys
from PIL import Image
from contract.images import decode

if sys.argv[2] == "preload":
    decode.preload()

calls = []
real_init = Image.init

def counting_init():
    calls.append(1)
    return real_init()

Image.init = counting_init
data = open(sys.argv[1], "rb").read()
try:
    decode.decode(data)
except Exception:  # the garbage case is refused; what matters is whether init() ran
    pass
print("init" if calls else "ok")
"""


def _cases() -> list[tuple[str, bytes]]:
    img = photo_like(64, 48)
    formats = [f for f in SUPPORTED_FORMATS if f in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")]
    return [(f, encode(img, f)) for f in formats] + [("garbage", b"not an image at all " * 4)]


def _run(tmp_path: Path, name: str, data: bytes, mode: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / name
    path.write_bytes(data)
    return subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), mode],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )


@pytest.mark.parametrize(("name", "data"), _cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_no_request_imports_a_plugin_after_preload(tmp_path: Path, name: str, data: bytes) -> None:
    done = _run(tmp_path, name, data, "preload")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_without_preload_a_tiff_imports_every_plugin(tmp_path: Path) -> None:
    # The cost preload removes is real: the same child, without preload, calls Image.init().
    done = _run(tmp_path, "tiff", encode(photo_like(64, 48), "TIFF"), "none")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "init"


def test_preload_registers_an_opener_for_every_served_format() -> None:
    preload()
    assert "PIL.TiffImagePlugin" in DECODER_MODULES
    assert all(m.startswith("PIL.") and m.endswith("ImagePlugin") for m in DECODER_MODULES)
    assert [f for f in SUPPORTED_FORMATS if f not in Image.OPEN] == []
