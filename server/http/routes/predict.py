"""``POST /predict``: encoded images in, top-k ImageNet classes out."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from contract.errors import BadRequest, InvalidParameter, UnsupportedImageFormat
from server.auth import authorized_state
from server.flow.admission import Ticket
from server.flow.pipeline import Images, Inferred
from server.http.direct import DirectRoute, int_query, path_param, query_param
from server.http.disconnect import cancel_on_disconnect
from server.models.repository import ServedModel
from server.observe import observe_request
from server.state import AppState

# DirectRoute: no dependency solving or parameter validation per request (server/http/direct.py);
# each route checks the API key and reads its parameters itself.
router = APIRouter(tags=["predict"], route_class=DirectRoute)
_MAX_NAME = 128
"""longest model name the ``model`` query parameter may give"""

_IMAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One image as the raw body (image/* or application/octet-stream), or "
        "one or more images as multipart/form-data file parts (any field name, in order).",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


class Prediction(BaseModel):
    index: int = Field(description="ImageNet-1k class index, 0..999")
    label: str
    probability: float = Field(description="softmax probability over all classes")


class Timing(BaseModel):
    queue_ms: float
    preprocess_ms: float
    inference_ms: float = Field(description="duration of the batch this image ran in")
    batch_size: int = Field(description="images in that batch execution")


class ImageResult(BaseModel):
    predictions: list[Prediction]
    timing: Timing


class PredictResponse(BaseModel):
    model: str
    model_version: str
    weights: str
    random_weights: bool
    results: list[ImageResult] = Field(description="one entry per image, in request order")


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": desc}
    for code, desc in [
        (400, "not an image / malformed request"),
        (401, "missing or invalid API key"),
        (404, "unknown model"),
        (408, "body sent too slowly"),
        (413, "body or image too large"),
        (415, "unsupported content or image type"),
        (422, "invalid parameter"),
        (500, "inference failed"),
        (503, "overloaded, queue timeout, or shutting down (Retry-After)"),
    ]
}


async def read_images(request: Request, max_images: int) -> list[bytes]:
    """The encoded images of a request: multipart file parts in order, or the raw body.

    Raises:
        BadRequest: empty body, multipart without a file, or too many files.
        UnsupportedImageFormat: a content type that cannot hold an image.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return await _read_multipart(request, max_images)
    if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
        raise UnsupportedImageFormat(
            f"unsupported content type {ctype[:64]!r}: send image/*, application/octet-stream "
            "or multipart/form-data"
        )
    body = await request.body()
    if not body:
        raise BadRequest("empty body: send an image as the body or as a multipart file")
    return [body]


class _InMemoryParser(MultiPartParser):
    """Starlette's parser, keeping every part in memory: parts over 1 MiB would spool to
    ``/tmp`` (a small emptyDir in the pod) beside the body bytes the in-flight budget already
    counts; in memory they are those bytes, bounded by ``max_body_bytes_in_flight``."""

    spool_max_size = sys.maxsize


async def _read_multipart(request: Request, max_images: int) -> list[bytes]:
    parser = _InMemoryParser(
        request.headers, request.stream(), max_files=max_images, max_fields=max_images
    )
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise BadRequest(f"malformed multipart body: {e.message}") from None
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise BadRequest("multipart body has no file part; send the image as a file field")
        return [await f.read() for f in files]
    finally:
        await form.close()


_OFFLOAD_ENTRIES = 2000  # predictions above which encoding the body leaves the event loop


def encode(model: ServedModel, inferred: Inferred) -> bytes:
    """The ``PredictResponse`` JSON, built from arrays (no per-prediction objects)."""
    meta, labels = model.meta, model.meta.labels
    results: list[dict[str, Any]] = []
    for rows, done in inferred.parts:
        scores = done.value
        queue_ms, inference_ms = done.queue_seconds * 1000, done.run_seconds * 1000
        columns = zip(
            scores.indices.tolist(),
            scores.probabilities.tolist(),
            (inferred.seconds[rows] * 1000).tolist(),
            strict=True,
        )
        for idx, probs, preprocess_ms in columns:
            results.append(
                {
                    "predictions": [
                        {"index": i, "label": labels[i], "probability": p}
                        for i, p in zip(idx, probs, strict=True)
                    ],
                    "timing": {
                        "queue_ms": queue_ms,
                        "preprocess_ms": preprocess_ms,
                        "inference_ms": inference_ms,
                        "batch_size": done.batch_rows,
                    },
                }
            )
    return orjson.dumps(
        {
            "model": model.name,
            "model_version": model.version,
            "weights": meta.weights,
            "random_weights": meta.random_weights,
            "results": results,
        }
    )


async def _predict(
    state: AppState,
    request: Request,
    name: str | None,
    version: str | None = None,
    max_name: int | None = None,
) -> Response:
    """``name``: the model the path or the query names (None: the default), as given;
    ``max_name``: its longest allowed length (the query's; a path's is unlimited: a long one
    is an unknown model).

    Raises:
        InvalidParameter: a name over ``max_name`` characters, a malformed top_k, or one
            outside 1..max_top_k.
        ServerError: whatever the repository or the pipeline raises (unknown model, overload,
            bad image...).
    """
    name = name or state.settings.default_model
    async with observe_request(state.metrics, "predict", name, state.repository.configured):
        if max_name is not None and len(name) > max_name:
            raise InvalidParameter(
                f"invalid request: query parameter model: at most {max_name} characters"
            )
        k = int_query(request, "top_k", 5)
        if not 1 <= k <= state.settings.max_top_k:  # max_top_k <= 1000 (settings)
            raise InvalidParameter(f"top_k must be in 1..{state.settings.max_top_k}")
        model = state.repository.get_ready(name, version)

        async def read(ticket: Ticket) -> tuple[None, Images]:
            images = await read_images(request, state.settings.max_images_per_request)
            ticket.body_complete()
            return None, Images(k, encoded=images)

        _, inferred = await state.pipeline.infer(
            model, read, guard=lambda work: cancel_on_disconnect(request, work)
        )
        if len(inferred.seconds) * k > _OFFLOAD_ENTRIES:
            body = await asyncio.to_thread(encode, model, inferred)
        else:
            body = encode(model, inferred)
        return Response(body, media_type="application/json")


_TOP_K = query_param(
    "top_k",
    {
        "default": 5,
        "description": "number of classes to return, 1..1000",
        "title": "Top K",
        "type": "integer",
    },
    "number of classes to return, 1..1000",
)
_MODEL_QUERY = query_param(
    "model",
    {"anyOf": [{"maxLength": _MAX_NAME, "type": "string"}, {"type": "null"}], "title": "Model"},
)


def _doc(*parameters: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` of a predict route: its parameters (a DirectRoute declares none of
    its own) and the image body."""
    return {"parameters": list(parameters), **_IMAGE_BODY}


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=_ERRORS,
    openapi_extra=_doc(_TOP_K, _MODEL_QUERY),
)
async def predict(request: Request) -> Response:
    """Classify one or more images with ``model`` (default from settings)."""
    state = authorized_state(request)
    return await _predict(state, request, request.query_params.get("model"), max_name=_MAX_NAME)


@router.post(
    "/predict/{model}",
    response_model=PredictResponse,
    responses=_ERRORS,
    openapi_extra=_doc(path_param("model"), _TOP_K),
)
async def predict_model(request: Request) -> Response:
    """Classify one or more images with the model named in the path (its highest ready
    version)."""
    state = authorized_state(request)
    return await _predict(state, request, request.path_params["model"])


@router.post(
    "/predict/{model}/versions/{version}",
    response_model=PredictResponse,
    responses=_ERRORS,
    openapi_extra=_doc(path_param("model"), path_param("version"), _TOP_K),
)
async def predict_version(request: Request) -> Response:
    """Classify with one version of the model (404 if that version is not served)."""
    state = authorized_state(request)
    params = request.path_params
    return await _predict(state, request, params["model"], params["version"])
