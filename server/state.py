"""What one app instance owns, created by the factory and filled in by the lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from fastapi import Request

from server.flow.cpubudget import CpuBudget
from server.flow.pipeline import Pipeline
from server.metrics import Metrics
from server.models.repository import ModelRepository
from server.scrape import Scrapes
from server.settings import Settings


@dataclass
class Lifecycle:
    """Phase flags read by the readiness endpoints. ``draining`` flips on SIGTERM."""

    started: bool = False
    draining: bool = False
    startup_error: str = ""
    stuck: bool = False  # readiness last found the pipeline stuck (logged when it changes)


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    repository: ModelRepository
    pipeline: Pipeline
    scrapes: Scrapes
    budget: CpuBudget
    lifecycle: Lifecycle = field(default_factory=Lifecycle)

    @property
    def ready(self) -> bool:
        return self.lifecycle.started and not self.lifecycle.draining and self.repository.ready


async def get_state(request: Request) -> AppState:
    """FastAPI dependency: the app's state (set by ``create_app``). ``async``: a sync
    dependency would be run in the thread pool, one hop per request."""
    return cast(AppState, request.app.state.server)
