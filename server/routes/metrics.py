"""Prometheus exposition of the app's own registry."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..state import AppState, get_state

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(state: Annotated[AppState, Depends(get_state)]) -> Response:
    """Prometheus text format (metric names in docs/DESIGN.md)."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
