"""The demo page: ``GET /`` and its assets under ``/ui/``, static files shipped in the package.

The page is one more client of the public API (``GET /models``, ``POST /predict/{model}``),
running in the visitor's browser; the server grants it nothing the API would not grant anyone.
So the page and its assets are open, like ``/docs`` and ``/models``: they hold no data, and
the API key, when one is set, is typed into the page and sent by it on each ``/predict``.

Every answer carries a Content-Security-Policy that allows scripts, styles and connections to
this origin only (previews are ``blob:`` URLs of files the visitor chose): no inline script, no
third-party host, no framing, no form posts elsewhere.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter, Response
from starlette.exceptions import HTTPException

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate each time, so a server upgrade never runs an old script against a new API.
    "Cache-Control": "no-cache",
}
PAGE = "index.html"
# The only files served: a fixed list, so no path from the URL ever reaches the filesystem.
ASSETS = {
    PAGE: "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}

router = APIRouter(tags=["ui"], include_in_schema=False)


@cache
def _read(name: str) -> bytes:
    """The bytes of ``server/http/ui/<name>``, read once (the files ship with the package)."""
    return files("server.http").joinpath("ui", name).read_bytes()


def _serve(name: str) -> Response:
    return Response(_read(name), media_type=ASSETS[name], headers=HEADERS)


# Plain ``def``: the first read of each file happens in Starlette's thread pool, not on the loop.
@router.get("/")
def page() -> Response:
    """The page (HTML); it loads ``/ui/style.css``, ``/ui/app.js`` and ``/ui/icon.svg``."""
    return _serve(PAGE)


@router.get("/ui/{name}")
def asset(name: str) -> Response:
    """One of the page's files; 404 ``not_found`` for any other name."""
    if name not in ASSETS or name == PAGE:
        raise HTTPException(404, f"no such file: /ui/{name[:64]}")
    return _serve(name)
