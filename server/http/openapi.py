"""The OpenAPI document, made accurate where FastAPI's defaults are not.

FastAPI documents request-validation failures as ``{"detail": [...]}`` and leaves error
responses declared with only a description; this server answers every error (including 404
for unknown paths and 405) with ``{"error": str, "code": str}``. :func:`openapi_with_errors`
gives every 4xx/5xx response, and a ``default`` response on every operation, that schema.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "what was wrong, for people"},
        "code": {"type": "string", "description": "machine-readable error code"},
    },
    "required": ["error", "code"],
    "additionalProperties": False,
}
_ERROR_CONTENT: dict[str, Any] = {
    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
}
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")


def openapi_with_errors(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """A replacement for ``app.openapi``: FastAPI's document with the error schema applied."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for name in _FASTAPI_VALIDATION:
                schemas.pop(name, None)
            schemas["Error"] = ERROR_SCHEMA
            for item in doc.get("paths", {}).values():
                for op in item.values():
                    _document_errors(op.setdefault("responses", {}))
            app.openapi_schema = doc
        return app.openapi_schema

    return openapi


def _document_errors(responses: dict[str, Any]) -> None:
    for status, response in responses.items():
        if status != "default" and int(status) < 400:
            continue
        if status == "422":
            response["description"] = "invalid parameter"
        response["content"] = _ERROR_CONTENT
    responses.setdefault("default", {"description": "any other error", "content": _ERROR_CONTENT})
