"""Prometheus exposition of the app's metrics (every worker's, with several)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.auth import require_api_key
from server.state import AppState, get_state


async def metrics_key(request: Request, state: Annotated[AppState, Depends(get_state)]) -> None:
    """The API key, where ``metrics_auth`` asks for it (here and on the v2 statistics).

    Raises:
        Unauthorized: ``metrics_auth`` is on and the request's key is missing or wrong.
    """
    if state.settings.metrics_auth:
        await require_api_key(request, state)


router = APIRouter(tags=["metrics"], dependencies=[Depends(metrics_key)])


_TEXT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition format",
        "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
    },
    401: {"description": "metrics_auth is on and the API key is missing or wrong"},
}


@router.get("/metrics", response_class=Response, responses=_TEXT)
async def metrics(state: Annotated[AppState, Depends(get_state)]) -> Response:
    """Prometheus text format (metric names in docs/DESIGN.md); with several workers, up to
    1 s old (docs/RELIABILITY.md, "Metrics")."""
    snapshot = await state.scrapes.snapshot()
    return Response(snapshot.text, media_type=CONTENT_TYPE_LATEST)
