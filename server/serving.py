"""One server process: the app on uvicorn, with a drain on SIGTERM."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import socket
import time
from types import FrameType

import uvicorn

from server.app import create_app
from server.settings import Settings
from server.state import AppState

log = logging.getLogger("server")


class DrainingServer(uvicorn.Server):
    """On the first SIGTERM/SIGINT: readiness turns 503 at once, requests keep being served
    for ``shutdown_delay_s`` (so load balancers notice), then uvicorn's graceful shutdown
    (stop accepting, finish in-flight requests) and the lifespan's bounded batcher drain."""

    def __init__(self, config: uvicorn.Config, state: AppState) -> None:
        super().__init__(config)
        self._state = state
        self._exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._exit_at is not None:
            # A second signal ends the delay at once; a SIGINT after that forces the exit.
            super().handle_exit(sig, frame)
            return
        self._state.lifecycle.draining = True
        self._exit_at = time.monotonic() + self._state.settings.shutdown_delay_s
        log.info("signal %d: draining (readiness now 503)", sig)

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        if self._state.lifecycle.startup_error:  # a model failed to load: exit, do not linger
            self.should_exit = True
        return await super().on_tick(counter)


def _http_protocol(settings: Settings, state: AppState) -> type[asyncio.Protocol] | str:
    """The head-bounded httptools protocol; uvicorn's h11 (its byte bound only) without it."""
    if importlib.util.find_spec("httptools") is None:
        return "h11"
    from server.http.httpguard import guarded_protocol

    return guarded_protocol(
        max_headers=settings.max_headers,
        max_head_bytes=settings.max_head_bytes,
        head_timeout_s=settings.head_timeout_s,
        metrics=state.metrics,
    )


def serve(
    settings: Settings, sockets: list[socket.socket] | None = None, *, load_first: bool = False
) -> str:
    """Serve until a signal (or a failed model load) ends it; returns the startup error, ""
    if none. ``sockets``: already listening ones to accept on (a worker's share of the
    supervisor's); None binds ``settings.host:port``. ``load_first``: see ``create_app``."""
    app = create_app(settings, load_first=load_first)
    state: AppState = app.state.server
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        server_header=False,
        timeout_graceful_shutdown=settings.drain_timeout_s,  # type: ignore[arg-type]
        access_log=settings.log_level == "debug",
        lifespan="on",
        http=_http_protocol(settings, state),
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=settings.max_head_bytes,
    )
    try:
        DrainingServer(config, state).run(sockets)
    except SystemExit:
        # uvicorn's exit when the lifespan's startup raised: a load_first worker whose load
        # failed (returned below) or that was stopped while loading (a clean stop).
        if not (state.lifecycle.startup_error or state.lifecycle.draining):
            raise
    return state.lifecycle.startup_error
