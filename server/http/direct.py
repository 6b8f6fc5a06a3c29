"""Routes on the hot path: documented by FastAPI, served without its per-request machinery.

A FastAPI route solves its dependencies and validates its parameters through pydantic on
every request; for ``POST /predict`` that was ~110 us of a ~190 us route on a 2-core EPYC
(AVX2 only), against ~75 us for a plain Starlette endpoint (the same routing, middleware and
response; ``docs/REQUEST_PATH.md``). A :class:`DirectRoute` keeps the FastAPI route, so the
OpenAPI schema, the tags and the router stay as they are, but calls its endpoint with the
request and nothing else. The endpoint reads its parameters with :func:`int_query`, which
raises the same domain error a validation failure maps to.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from contract.errors import InvalidParameter

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]

_MAX_INT_DIGITS = 9
"""longest integer a query parameter may spell (an int32 fits; more is a mistake)"""


class DirectRoute(APIRoute):
    """An :class:`APIRoute` whose endpoint is ``async def endpoint(request) -> Response``.

    Dependencies given later, to ``include_router(..., dependencies=...)``, are not seen here
    and would not run either: include these routers without any.

    Raises:
        TypeError: at declaration, if the endpoint or its router declares any parameter or
            dependency: none of them would run (an API-key dependency would be skipped
            silently), so the endpoint must do that work itself.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        d = self.dependant
        declared = [
            *(p.name for p in (*d.path_params, *d.query_params, *d.header_params)),
            *(p.name for p in (*d.cookie_params, *d.body_params)),
            *(str(sub.call) for sub in d.dependencies),
        ]
        if declared:
            raise TypeError(
                f"DirectRoute {path}: the endpoint takes the request only; declared {declared} "
                "would never be resolved (read them from the request; document them in "
                "openapi_extra)"
            )

    def get_route_handler(self) -> Endpoint:
        endpoint: Endpoint = self.endpoint
        return endpoint


def int_query(request: Request, name: str, default: int) -> int:
    """Query parameter ``name`` as an int (optional sign, decimal digits, surrounding blanks
    allowed), ``default`` when absent; the last one when repeated, as FastAPI reads it.

    Raises:
        InvalidParameter: not an integer, or longer than 9 digits.
    """
    raw = request.query_params.get(name)
    if raw is None:
        return default
    text = raw.strip()
    digits = text[1:] if text[:1] in "+-" else text
    if not (digits.isascii() and digits.isdigit()) or len(digits) > _MAX_INT_DIGITS:
        shown = raw if len(raw) <= 32 else raw[:32] + "..."
        raise InvalidParameter(
            f"invalid request: query parameter {name}: {shown!r} is not an integer"
        )
    return int(text)


def query_param(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    """The OpenAPI object of an optional query parameter (for ``openapi_extra``)."""
    out: dict[str, Any] = {"in": "query", "name": name, "required": False, "schema": schema}
    if description:
        out["description"] = description
    return out


def path_param(name: str) -> dict[str, Any]:
    """The OpenAPI object of a string path parameter (for ``openapi_extra``)."""
    return {
        "in": "path",
        "name": name,
        "required": True,
        "schema": {"title": name.title(), "type": "string"},
    }
