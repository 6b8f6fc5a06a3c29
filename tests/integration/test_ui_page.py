"""``GET /`` and ``/ui/<file>``: exactly the packaged files, with their security headers, and
nothing at all when the page is turned off (``--ui false``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from server.app import create_app
from server.cli import load_settings
from server.http.routes.ui import HEADERS
from server.settings import Settings
from tests.conftest import ROOT, ServerProcess

UI = ROOT / "server" / "http" / "ui"
FILES = [
    ("/", "index.html", "text/html; charset=utf-8"),
    ("/ui/app.js", "app.js", "text/javascript; charset=utf-8"),
    ("/ui/style.css", "style.css", "text/css; charset=utf-8"),
    ("/ui/icon.svg", "icon.svg", "image/svg+xml"),
]


@pytest.mark.parametrize(("path", "name", "ctype"), FILES)
def test_page_files_with_their_headers(
    server: ServerProcess, path: str, name: str, ctype: str
) -> None:
    r = server.client().get(path)
    assert r.status_code == 200
    assert r.content == (UI / name).read_bytes()
    assert r.headers["content-type"] == ctype
    for header, value in HEADERS.items():
        assert r.headers[header] == value, header
    assert "server" not in r.headers


def test_every_file_in_server_ui_is_served() -> None:
    """A file added to server/http/ui/ without a route (or the other way round) fails here."""
    assert sorted(p.name for p in UI.iterdir()) == sorted(name for _, name, _ in FILES)


@pytest.mark.parametrize(
    "path",
    ["/ui/index.html", "/ui/nope.js", "/ui/..%2Fapp.py", "/ui/", "/ui/app.js/x", "/index.html"],
)
def test_nothing_else_is_served(server: ServerProcess, path: str) -> None:
    r = server.client().get(path)
    assert r.status_code == 404, r.text
    assert r.json()["code"] == "not_found"
    assert r.headers["content-type"] == "application/json"


def test_unknown_asset_error_text(server: ServerProcess) -> None:
    r = server.client().get("/ui/nope.js")
    assert r.json() == {"error": "no such file: /ui/nope.js", "code": "not_found"}


def test_the_page_is_not_in_the_api_document(server: ServerProcess) -> None:
    paths = server.client().get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/ui") for p in paths)


def get(app: FastAPI, path: str) -> httpx.Response:
    """``GET path`` on ``app`` in this process, without its lifespan (so nothing loads)."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.get(path)

    return asyncio.run(go())


def test_ui_off_serves_no_page() -> None:
    off = create_app(Settings(model_dir=ROOT, ui=False))
    for path in ("/", "/ui/app.js"):
        r = get(off, path)
        assert r.status_code == 404
        assert r.json() == {"error": "Not Found", "code": "not_found"}
    assert get(create_app(Settings(model_dir=ROOT)), "/").status_code == 200


@pytest.mark.parametrize(
    ("argv", "expected"), [([], True), (["--ui", "false"], False), (["--ui", "true"], True)]
)
def test_ui_flag(
    argv: list[str], expected: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RESNET_UI", raising=False)
    assert load_settings(["--model-dir", str(tmp_path), *argv]).ui is expected
    monkeypatch.setenv("RESNET_UI", "false")
    assert load_settings(["--model-dir", str(tmp_path)]).ui is False
