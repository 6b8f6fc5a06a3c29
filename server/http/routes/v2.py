"""Open Inference Protocol v2 REST endpoints (KServe / Triton); see docs/V2_PROTOCOL.md.

Thin: each endpoint resolves the model and delegates to ``describe``, ``inference`` or
``stats``. Every path with ``{model}`` also exists under ``/versions/{version}``, which
serves that version (``ModelRepository.get`` resolves both). Errors are the server's ``{"error", "code"}`` JSON, a superset of v2's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from contract.errors import NotReady
from server.auth import authorized_state
from server.flow.admission import Ticket
from server.flow.pipeline import Images
from server.http.direct import DirectRoute, path_param, query_param
from server.http.disconnect import cancel_on_disconnect
from server.http.routes.health import readyz
from server.http.routes.metrics import metrics_key
from server.observe import observe_request
from server.state import AppState, get_state
from server.v2 import describe, inference
from server.v2.codec import HEADER_LENGTH
from server.v2.schemas import (
    InferRequest,
    InferResponse,
    ModelConfig,
    ModelMetadataResponse,
    ServerMetadata,
    StatsResponse,
    inline_schema,
)
from server.v2.stats import Samples, model_stats

router = APIRouter(tags=["v2"])
_F = TypeVar("_F", bound=Callable[..., Any])
State = Annotated[AppState, Depends(get_state)]

_BINARY: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}
_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A v2 inference request as JSON, or (binary tensor data extension) "
        f"the JSON header followed by raw tensors, its length in {HEADER_LENGTH}.",
        "content": {
            "application/json": {"schema": inline_schema(InferRequest)},
            "application/octet-stream": _BINARY,
        },
    }
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "malformed request, shape, datatype or data",
        401: "missing or invalid API key",
        404: "unknown model or version",
        408: "body sent too slowly",
        413: "body or image too large",
        415: "unsupported image format",
        422: "invalid parameter",
        500: "inference failed",
        503: "not ready, overloaded, queue full or timed out, shutting down (Retry-After)",
    }
    return {c: {"description": text[c]} for c in codes}


_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": f"JSON response, or JSON header + binary outputs ({HEADER_LENGTH} set)",
        "content": {
            "application/json": {"schema": inline_schema(InferResponse)},
            "application/octet-stream": _BINARY,
        },
    },
    **_errors(400, 401, 404, 408, 413, 415, 422, 500, 503),
}
_READY = {200: {"description": "ready (empty body)"}, **_errors(503)}


@router.get("/v2", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    """Server name, version and the protocol extensions implemented."""
    return describe.server_metadata()


@router.get("/v2/health/live", response_class=Response, responses={200: {"description": "live"}})
async def live() -> Response:
    """Liveness: 200 while the process answers."""
    return Response()


@router.get("/v2/health/ready", response_class=Response, responses=_READY)
async def ready(state: State) -> Response:
    """Readiness: 200 when every model is loaded and warmed up, else 503 with the reason."""
    status = await readyz(state)
    return status if isinstance(status, JSONResponse) else Response()


@router.get(
    "/v2/models/stats",
    response_model=StatsResponse,
    responses=_errors(401),
    dependencies=[Depends(metrics_key)],
)
async def all_stats(state: State) -> StatsResponse:
    """Statistics of every served model (shadows a model named "stats")."""
    samples = Samples((await state.scrapes.snapshot()).families)
    models = state.repository.all_served()
    return StatsResponse(model_stats=[model_stats(samples, m) for m in models])


def _model_route(method: str, suffix: str, **kw: Any) -> Callable[[_F], _F]:
    """Register an endpoint at ``/v2/models/{model}<suffix>`` and at
    ``/v2/models/{model}/versions/{version}<suffix>``; ``version`` is None on the first."""

    def register(endpoint: _F) -> _F:
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            router.add_api_route(prefix + suffix, endpoint, methods=[method], **kw)
        return endpoint

    return register


@_model_route("GET", "", response_model=ModelMetadataResponse, responses=_errors(404))
async def model_metadata(
    state: State, model: str, version: str | None = None
) -> ModelMetadataResponse:
    """Inputs, outputs (-1 is the batch axis), platform and versions of ``model``."""
    m = describe.model_at(state, model, version)
    return describe.model_metadata(m, state.repository.versions_of(m.name))


@_model_route("GET", "/ready", response_class=Response, responses={**_READY, **_errors(404, 503)})
async def model_ready(state: State, model: str, version: str | None = None) -> Response:
    """200 when ``model`` is loaded and warmed up; 503 otherwise; 404 if unknown."""
    m = describe.model_at(state, model, version)
    if not m.ready or state.lifecycle.draining:
        reason = "shutting down" if state.lifecycle.draining else m.not_ready_reason
        raise NotReady(f"model {m.name!r} not ready: {reason}")
    return Response()


@_model_route("GET", "/config", response_model=ModelConfig, responses=_errors(404))
async def model_config(state: State, model: str, version: str | None = None) -> ModelConfig:
    """Triton model configuration (model_configuration extension)."""
    return describe.model_config(state, describe.model_at(state, model, version))


@_model_route(
    "GET",
    "/stats",
    response_model=StatsResponse,
    responses=_errors(401, 404),
    dependencies=[Depends(metrics_key)],
)
async def model_statistics(state: State, model: str, version: str | None = None) -> StatsResponse:
    """Triton statistics of ``model`` (statistics extension), from the Prometheus metrics."""
    m = describe.model_at(state, model, version)
    samples = Samples((await state.scrapes.snapshot()).families)
    return StatsResponse(model_stats=[model_stats(samples, m)])


async def infer(request: Request) -> Response:
    """Run ``model`` on a v2 inference request (JSON or binary tensors)."""
    # A DirectRoute: the parameters are read here; the unversioned path has always taken the
    # version as a query parameter too.
    state = authorized_state(request)
    model = request.path_params["model"]
    version = request.path_params.get("version", request.query_params.get("version"))
    header = request.headers.get(HEADER_LENGTH)
    async with observe_request(state.metrics, "v2_infer", model, state.repository.configured):
        m = describe.model_at(state, model, version, ready=True)

        async def read(ticket: Ticket) -> tuple[inference.Prepared, Images]:
            body = await request.body()
            ticket.body_complete()
            prepared = await inference.parse(state, m, body, header)
            return prepared, inference.images(prepared)

        prepared, inferred = await state.pipeline.infer(
            m, read, guard=lambda work: cancel_on_disconnect(request, work)
        )
        out, json_len = await inference.encode(m, prepared, inferred.scores)
    if json_len is None:
        return Response(out, media_type="application/json")
    return Response(
        out, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_len)}
    )


# ``infer`` is a DirectRoute (no dependencies, no parameter validation per request), so its
# parameters are documented here, as FastAPI documented them when it read them.
_OPTIONAL_STR: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "null"}]}
_HEADER_DOC = "length of the JSON header when binary data follows"
_HEADER_PARAM: dict[str, Any] = {
    "description": _HEADER_DOC,
    "in": "header",
    "name": HEADER_LENGTH,
    "required": False,
    "schema": {**_OPTIONAL_STR, "description": _HEADER_DOC, "title": HEADER_LENGTH},
}
for _prefix, _version in (
    ("/v2/models/{model}", query_param("version", {**_OPTIONAL_STR, "title": "Version"})),
    (
        "/v2/models/{model}/versions/{version}",
        {**path_param("version"), "schema": {**_OPTIONAL_STR, "title": "Version"}},
    ),
):
    router.add_api_route(
        _prefix + "/infer",
        infer,
        methods=["POST"],
        response_class=Response,
        responses=_INFER_RESPONSES,
        openapi_extra={"parameters": [path_param("model"), _version, _HEADER_PARAM], **_INFER_BODY},
        route_class_override=DirectRoute,
    )
