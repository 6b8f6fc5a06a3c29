"""The app factory: builds one app from one ``Settings``, and wires its parts together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.types import Scope

from contract.cpuinfo import read_cpuinfo
from contract.errors import ServerError
from server import __version__
from server.flow.cpubudget import CpuBudget
from server.flow.pipeline import Pipeline
from server.flow.respcache import ResponseCache
from server.grpc.serve import serving as serving_grpc
from server.http.errors import install_handlers
from server.http.hosts import AllowedHosts
from server.http.limits import LimitsMiddleware, is_inference
from server.http.openapi import openapi_with_errors
from server.http.routes import docs, health, metrics, predict, ui, v2
from server.http.routes import repository as repository_api
from server.metrics import SAMPLE_INTERVAL_S, Metrics
from server.models.control import RepositoryControl
from server.models.repository import ModelRepository
from server.observe import record_unrouted
from server.scrape import SCRAPE_MAX_AGE_S, Scrapes
from server.settings import Settings
from server.state import AppState

log = logging.getLogger(__name__)

_BATCHER_GRACE_S = 2.0

#: Called once (on the event loop, no arguments) when the app's models are loaded and ready:
#: how a worker process tells its supervisor (``server.workers``). Read by ``create_app``; a
#: context variable rather than a parameter so that ``serving.serve`` passes it through.
ON_READY: ContextVar[Callable[[], None] | None] = ContextVar("on_ready", default=None)


def create_app(settings: Settings, *, load_first: bool = False) -> FastAPI:
    """Build the app. Nothing is loaded here: models load and warm up in the lifespan.

    ``load_first``: load before serving (the lifespan's startup waits, and fails if a model
    does), for a worker that other workers cover meanwhile; otherwise models load in the
    background while liveness and readiness answer.
    """
    metrics_ = Metrics(
        CollectorRegistry(), settings.max_batch_size, multiprocess=settings.workers > 1
    )
    budget = CpuBudget(settings.budget_cores)
    cache = (
        ResponseCache(settings.response_cache_bytes, metrics_)
        if settings.response_cache_bytes
        else None
    )
    repository = ModelRepository(settings, metrics_, read_cpuinfo(), budget)
    state = AppState(
        settings=settings,
        metrics=metrics_,
        repository=repository,
        pipeline=Pipeline(settings, metrics_, budget, cache),
        scrapes=Scrapes(metrics_, SCRAPE_MAX_AGE_S if metrics_.multiprocess else 0.0),
        budget=budget,
        control=RepositoryControl(settings, repository, cache),
        cache=cache,
    )
    app = FastAPI(
        title="resnet-server",
        version=__version__,
        description="ImageNet classification (ResNet18/50) on ONNX Runtime or OpenVINO with dynamic "
        "batching.",
        lifespan=_lifespan(state, load_first, ON_READY.get()),
        docs_url=None,  # routes.docs, with the setting
        redoc_url=None,
    )
    app.state.server = state
    app.openapi = openapi_with_errors(app)  # type: ignore[method-assign]

    def count_unrouted(scope: Scope, err: ServerError) -> None:
        # Answered before (or instead of) the route, which would otherwise have counted it.
        if is_inference(scope):
            record_unrouted(
                metrics_, scope, state.repository.configured, settings.default_model, err
            )

    install_handlers(app, on_early_error=count_unrouted)
    routers = [health.router, predict.router, metrics.router, v2.router, repository_api.router]
    if settings.ui:
        routers.append(ui.router)
    if settings.docs:
        routers.append(docs.router())
    for router in routers:
        app.include_router(router)
    app.add_middleware(
        LimitsMiddleware,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
        max_concurrent=settings.max_concurrent_requests,
        max_bytes_in_flight=settings.max_body_bytes_in_flight,
        min_bytes_per_s=settings.min_upload_bytes_per_s,
        on_refusal=count_unrouted,
    )
    if settings.allowed_hosts:  # outermost: a request for another name gets nothing else
        app.add_middleware(AllowedHosts, allowed=settings.allowed_hosts, on_refusal=count_unrouted)
    return app


def _lifespan(
    state: AppState, load_first: bool, on_ready: Callable[[], None] | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.pipeline.start()
        # Load in the background so liveness and readiness (503 "loading") answer meanwhile.
        loading = asyncio.create_task(_load(state, on_ready))
        tasks = [loading]
        if state.metrics.multiprocess:
            tasks.append(asyncio.create_task(_sample_metrics(state.metrics)))
        if state.settings.model_control == "poll":
            tasks.append(asyncio.create_task(_poll_after(state, loading)))
        try:
            if load_first:
                await _loaded(state, loading)
            # After a load_first worker's load: no gRPC call may reach a loading worker either.
            async with serving_grpc(state):
                yield
        finally:
            state.lifecycle.draining = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # uvicorn has already waited up to drain_timeout_s for in-flight requests; what is
            # still queued now gets a short grace, not a second full drain.
            await state.repository.stop(min(state.settings.drain_timeout_s, _BATCHER_GRACE_S))
            state.pipeline.close()
            state.scrapes.close()
            log.info("stopped")

    return lifespan


async def _loaded(state: AppState, loading: asyncio.Task[None]) -> None:
    """Wait for the load, or for a stop signal during it.

    Raises:
        RuntimeError: the load failed, or a stop came first; uvicorn then exits without
            having served.
    """
    while not loading.done() and not state.lifecycle.draining:
        await asyncio.wait({loading}, timeout=0.1)
    if not loading.done():
        raise RuntimeError("stopped while loading")
    if state.lifecycle.startup_error:
        raise RuntimeError(state.lifecycle.startup_error)


async def _poll_after(state: AppState, loading: asyncio.Task[None]) -> None:
    """``model_control=poll``: follow model_dir once the start's load has succeeded."""
    await asyncio.wait({loading})
    if not state.lifecycle.startup_error:
        await state.control.poll_forever()


async def _sample_metrics(metrics: Metrics) -> None:
    while True:
        metrics.sample()
        await asyncio.sleep(SAMPLE_INTERVAL_S)


async def _load(state: AppState, on_ready: Callable[[], None] | None) -> None:
    try:
        await state.repository.load_all()
    except Exception as e:
        state.lifecycle.startup_error = f"model load failed: {e}"
        log.exception("model load failed; readiness stays 503")
        return
    state.lifecycle.started = True
    if state.repository.ready:
        log.info("ready: serving %s", sorted(state.repository.models))
        if on_ready is not None:
            on_ready()
    else:
        bad = {n: m.not_ready_reason for n, m in state.repository.models.items() if not m.ready}
        if state.settings.workers > 1:
            # One worker unlike the others (a GPU out of memory for the last one, say) would
            # make readiness and answers depend on which worker a connection reaches.
            state.lifecycle.startup_error = f"models loaded but not ready: {bad}"
            log.error("models loaded but NOT ready: this worker stops the server: %s", bad)
            return
        log.error("models loaded but NOT ready (readiness stays 503): %s", bad)
