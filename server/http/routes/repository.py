"""Triton's model repository extension over REST (:mod:`server.models.control` does the work).

``POST /v2/repository/index`` (body ``{"ready": bool}``, optional): a JSON list of
``{"name", "version", "state", "reason"}`` (name only for a model never loaded).
``POST /v2/repository/models/{model}/load`` and ``.../unload``: 200 with an empty body once
done. Always behind the API key when one is set; 403 ``repository_disabled`` with
``model_control=none`` (and load/unload with ``poll``).
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response

from contract.errors import BadRequest, BodyTooLarge
from server.auth import require_api_key
from server.state import AppState, get_state

router = APIRouter(tags=["repository"], dependencies=[Depends(require_api_key)])
State = Annotated[AppState, Depends(get_state)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed body, or (load) a version failed: the old ones still serve"},
    413: {"description": "body over 64 KiB"},
    401: {"description": "missing or invalid API key"},
    403: {"description": "the repository API is off for this model_control"},
    404: {"description": "no such model"},
}
_MAX_BODY = 64 * 1024


def _json_body(description: str, properties: dict[str, Any]) -> dict[str, Any]:
    """An optional JSON object body in the OpenAPI document (read by hand, not by FastAPI)."""
    schema = {"type": "object", "properties": properties}
    return {
        "requestBody": {
            "required": False,
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }


_INDEX_BODY = _json_body(
    "optional; ready: list only versions ready to serve", {"ready": {"type": "boolean"}}
)
_CONTROL_BODY = _json_body(
    "optional; parameters: Triton's load/unload parameters (config and file overrides are "
    "refused: the files in model_dir are what loads)",
    {"parameters": {"type": "object"}},
)


async def _body(request: Request) -> dict[str, Any]:
    """The JSON object body, ``{}`` when empty.

    Raises:
        BadRequest: not a JSON object.
        BodyTooLarge: over 64 KiB (413; read no further: these paths are outside the limits
            middleware, which covers inference).
    """
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > _MAX_BODY:
            raise BodyTooLarge(f"repository request body over {_MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"repository request body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest("repository request body must be a JSON object")
    return doc


def _parameters(doc: dict[str, Any]) -> dict[str, Any]:
    params = doc.get("parameters", {})
    if not isinstance(params, dict):
        raise BadRequest("'parameters' must be a JSON object")
    return params


@router.post("/v2/repository/index", responses=_ERRORS, openapi_extra=_INDEX_BODY)
async def index(request: Request, state: State) -> Response:
    """Every model version and its state (READY, LOADING, UNLOADING, UNAVAILABLE + reason)."""
    ready = (await _body(request)).get("ready", False)
    if not isinstance(ready, bool):
        raise BadRequest("'ready' must be true or false")
    entries = await state.control.index(ready)
    return Response(orjson.dumps([e.to_dict() for e in entries]), media_type="application/json")


@router.post("/v2/repository/models/{model}/load", responses=_ERRORS, openapi_extra=_CONTROL_BODY)
async def load(request: Request, state: State, model: str) -> Response:
    """Serve what ``model_dir`` holds for ``model`` under its version policy, swapping
    versions without downtime (docs/VERSIONS.md)."""
    params = _parameters(await _body(request))
    await state.control.load(model, params)
    return Response(media_type="application/json")


@router.post("/v2/repository/models/{model}/unload", responses=_ERRORS, openapi_extra=_CONTROL_BODY)
async def unload(request: Request, state: State, model: str) -> Response:
    """Stop serving every version of ``model`` (admitted requests finish first)."""
    params = _parameters(await _body(request))
    unknown = sorted(set(params) - {"unload_dependents"})
    if unknown:
        raise BadRequest(f"unload parameters {unknown[:8]} are not supported")
    await state.control.unload(model)
    return Response(media_type="application/json")
