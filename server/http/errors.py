"""The single place where errors become HTTP responses: ``{"error", "code"}`` JSON."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from contract.errors import (
    BadRequest,
    InvalidParameter,
    MethodNotAllowed,
    NotFound,
    NotReady,
    Overloaded,
    QueueFull,
    QueueTimeout,
    ServerError,
    ShuttingDown,
    Unauthorized,
    error_body,
    error_headers,
    validation_problems,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from fastapi import FastAPI
    from starlette.types import Scope

log = logging.getLogger(__name__)


def install_handlers(
    app: FastAPI, on_early_error: Callable[[Scope, ServerError], None] | None = None
) -> None:
    """Map every error to ``{"error", "code"}`` JSON: the one place status codes are chosen.

    ``on_early_error`` sees the errors raised before a route body runs (a missing API key, a
    malformed query parameter), which the route's own counting never sees.
    """
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException
    from starlette.requests import Request

    async def on_server_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServerError)
        if isinstance(exc, Unauthorized) and on_early_error is not None:  # a dependency's
            on_early_error(request.scope, exc)
        if exc.status >= 500 and not isinstance(
            exc, (NotReady, QueueFull, QueueTimeout, ShuttingDown, Overloaded)
        ):
            log.error("%s %s: %s", request.method, request.url.path, exc.message)
        return JSONResponse(error_body(exc), exc.status, headers=error_headers(exc))

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        parts = validation_problems(exc.errors(), "request")
        err = InvalidParameter("invalid request: " + "; ".join(parts))
        if on_early_error is not None:
            on_early_error(request.scope, err)
        return JSONResponse(error_body(err), err.status)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        kind = {404: NotFound, 405: MethodNotAllowed}.get(exc.status_code, BadRequest)
        err = kind(str(exc.detail))
        return JSONResponse(error_body(err), exc.status_code, headers=exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(ServerError("internal error")), 500)

    app.add_exception_handler(ServerError, on_server_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
