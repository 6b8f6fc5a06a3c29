"""The one error mapping: status, exact body, Retry-After, and no internals leaked."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import FastAPI

from contract import errors as e
from server.http.errors import install_handlers

pytestmark = pytest.mark.asyncio


def _app(exc: Exception) -> FastAPI:
    app = FastAPI()
    install_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise exc

    @app.get("/typed")
    async def typed(n: int) -> dict[str, int]:
        return {"n": n}

    return app


async def _get(app: FastAPI, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get(path)


@pytest.mark.parametrize(
    ("exc", "status", "code", "retry_after"),
    [
        (e.InvalidImage("cannot decode image"), 400, "invalid_image", None),
        (e.UnsupportedImageFormat("SVG is not supported"), 415, "unsupported_media_type", None),
        (e.ImageTooLarge("too many pixels"), 413, "image_too_large", None),
        (e.BodyTooLarge("body too big"), 413, "body_too_large", None),
        (e.BodyTimeout("slow"), 408, "body_timeout", None),
        (e.BadRequest("bad"), 400, "bad_request", None),
        (e.InvalidParameter("top_k must be in 1..1000"), 422, "invalid_parameter", None),
        (e.Unauthorized("no key"), 401, "unauthorized", None),
        (e.UnknownModel("unknown model 'x'"), 404, "unknown_model", None),
        (e.NotReady("loading"), 503, "not_ready", "1"),
        (e.QueueFull("queue full"), 503, "queue_full", "1"),
        (e.QueueTimeout("waited too long"), 503, "queue_timeout", "1"),
        (e.Overloaded("busy"), 503, "overloaded", "1"),
        (e.ShuttingDown("draining"), 503, "shutting_down", "5"),
        (e.InferenceFailed("inference failed: RuntimeError"), 500, "inference_failed", None),
    ],
)
async def test_domain_errors_map_to_status_and_body(
    exc: e.ServerError, status: int, code: str, retry_after: str | None
) -> None:
    r = await _get(_app(exc), "/boom")
    assert r.status_code == status
    assert r.json() == {"error": exc.message, "code": code}
    assert r.headers.get("retry-after") == retry_after


async def test_unexpected_error_is_500_without_internals(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        r = await _get(_app(KeyError("secret-internal-detail")), "/boom")
    assert r.status_code == 500
    assert r.json() == {"error": "internal error", "code": "internal_error"}
    assert "secret-internal-detail" not in r.text
    assert "Traceback" in caplog.text and "secret-internal-detail" in caplog.text


async def test_validation_error_names_the_parameter() -> None:
    r = await _get(_app(RuntimeError()), "/typed?n=abc")
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_parameter"
    assert r.json()["error"].startswith("invalid request: query.n:")


async def test_unknown_route_is_json_404() -> None:
    r = await _get(_app(RuntimeError()), "/nowhere")
    assert r.status_code == 404
    assert r.json() == {"error": "Not Found", "code": "not_found"}
