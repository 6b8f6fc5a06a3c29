"""Photos and assertions shared by the page tests: the server's own answer for the same bytes is
what the rendered page is compared with."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import skimage

# Real photos shipped with scikit-image, free to use: chelsea.png (a cat) and coffee.png are CC0
# (Stefan van der Walt, Rachel Michetti), rocket.jpg is public domain (SpaceX); see the
# docstrings of skimage.data.chelsea, .coffee and .rocket.
PHOTOS = Path(skimage.__file__).parent / "data"
CHELSEA = PHOTOS / "chelsea.png"
COFFEE = PHOTOS / "coffee.png"
ROCKET = PHOTOS / "rocket.jpg"
CTYPES = {".png": "image/png", ".jpg": "image/jpeg"}

# Set to a folder (docs/ for the README's images) to keep the screenshots the tests take.
SCREENSHOTS_ENV = "UI_SCREENSHOTS_DIR"


def predict(client: httpx.Client, model: str, *photos: Path, **headers: str) -> httpx.Response:
    """``POST /predict/<model>?top_k=5`` with ``photos`` as multipart files, like the page."""
    files = [("file", (p.name, p.read_bytes(), CTYPES[p.suffix])) for p in photos]
    return client.post(f"/predict/{model}", params={"top_k": 5}, files=files, headers=headers)


def assert_card_shows(card: dict[str, Any], expected: dict[str, Any]) -> None:
    """A rendered result card holds ``expected`` (one entry of ``/predict``'s ``results``):
    the same classes in the same order, their probabilities as text and as bar widths."""
    assert card["state"] == "done"
    got = [(p["index"], p["label"]) for p in card["predictions"]]
    assert got == [(p["index"], p["label"]) for p in expected["predictions"]]
    for shown, want in zip(card["predictions"], expected["predictions"], strict=True):
        # Same bytes, same model, batch of one both times: equal up to float summation order.
        assert shown["probability"] == pytest.approx(want["probability"], abs=1e-6)
        assert shown["shown"].endswith("%")
        assert float(shown["shown"][:-1]) == pytest.approx(100 * shown["probability"], abs=0.05)
        # CSSOM rounds the width it hands back (to 6 digits after the point, or fewer).
        bar = float(shown["bar"].removesuffix("%"))
        assert bar == pytest.approx(100 * shown["probability"], abs=1e-4)


def assert_timing_shows(card: dict[str, Any], timing: dict[str, Any]) -> None:
    """The card's timings are exactly ``timing``, the response the page itself received."""
    rows = {
        "queue": timing["queue_ms"],
        "preprocess": timing["preprocess_ms"],
        "inference (batch)": timing["inference_ms"],
        "batch size": timing["batch_size"],
    }
    assert set(card["timing"]) == set(rows)
    for name, value in rows.items():
        assert card["timing"][name]["value"] == value, name
    assert card["timing"]["batch size"]["shown"] == str(timing["batch_size"])
    for name in ("queue", "preprocess", "inference (batch)"):
        shown = card["timing"][name]["shown"]
        assert shown.endswith(" ms"), shown
        assert float(shown[:-3]) == pytest.approx(rows[name], abs=0.05), name


def keep_screenshot(png: Path) -> None:
    """Copy ``png`` into $UI_SCREENSHOTS_DIR when set (how docs/ui-*.png are made)."""
    folder = os.environ.get(SCREENSHOTS_ENV)
    if folder:
        shutil.copyfile(png, Path(folder) / png.name)
