"""Prometheus exposition of the app's metrics (every worker's, with several)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..state import AppState, get_state

router = APIRouter(tags=["metrics"])


_TEXT: dict[int | str, dict[str, Any]] = {200: {"description": "Prometheus text exposition format",
               "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}}  # fmt: skip


@router.get("/metrics", response_class=Response, responses=_TEXT)
async def metrics(state: Annotated[AppState, Depends(get_state)]) -> Response:
    """Prometheus text format (metric names in docs/DESIGN.md)."""
    return Response(generate_latest(state.metrics.view()), media_type=CONTENT_TYPE_LATEST)
