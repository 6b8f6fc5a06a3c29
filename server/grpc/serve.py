"""Start, drain and stop the gRPC server inside the app's lifespan, on the app's event loop.

:func:`serving` binds ``settings.grpc_port`` (all of ``settings.host``'s addresses) before the
app serves, with the message-size limit each way from the settings.
The drain follows REST's: when the app starts draining (SIGTERM), health turns NOT_SERVING at
once, and after ``shutdown_delay_s`` the server stops taking calls and gives those in flight
up to ``drain_timeout_s`` before cancelling them, all while uvicorn does the same for HTTP;
the lifespan then waits for that before the batcher stops.

With ``workers`` > 1 every worker binds the port with ``SO_REUSEPORT`` and the kernel spreads
connections over them; with one worker the option is off, so a port already taken fails the
start instead of being shared with a stranger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2_grpc

from server.grpc.health import Health
from server.grpc.proto import grpc_service_pb2_grpc
from server.grpc.servicer import InferenceServicer
from server.state import AppState

log = logging.getLogger(__name__)


def _options(state: AppState) -> list[tuple[str, int]]:
    s = state.settings
    limit = s.grpc_max_message_bytes or s.max_body_bytes
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", int(s.workers > 1)),
    ]


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@contextlib.asynccontextmanager
async def serving(state: AppState) -> AsyncIterator[None]:
    """Serve gRPC for the body of the ``async with`` (nothing if ``grpc_port`` is 0).

    Raises:
        RuntimeError: the port could not be bound (also the lifecycle's startup error: the
            process exits non-zero without serving).
    """
    settings = state.settings
    if not settings.grpc_port:
        yield
        return
    server = grpc.aio.server(options=_options(state))
    health = Health(state)
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        InferenceServicer(state), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    address = _address(settings.host, settings.grpc_port)
    try:
        server.add_insecure_port(address)
    except RuntimeError as e:
        # As a failed model load: the process exits with this error instead of serving.
        state.lifecycle.startup_error = f"gRPC: cannot listen on {address}: {e}"
        raise RuntimeError(state.lifecycle.startup_error) from None
    await server.start()
    log.info("gRPC listening on %s", address)
    watch = asyncio.create_task(_follow_then_drain(state, server, health))
    try:
        yield
    finally:
        if not state.lifecycle.draining:  # ended without a signal: nothing to wait for
            watch.cancel()
        await health.shutting_down()
        with contextlib.suppress(asyncio.CancelledError):
            await watch  # a drain under way finishes (uvicorn has finished HTTP's by now)
        await server.stop(settings.drain_timeout_s)  # a no-op once the drain stopped it
        log.info("gRPC stopped")


async def _follow_then_drain(state: AppState, server: grpc.aio.Server, health: Health) -> None:
    """Health follows readiness until draining begins; then, after ``shutdown_delay_s``, a
    graceful stop with ``drain_timeout_s`` of grace (uvicorn's own schedule for HTTP)."""
    await health.follow()
    await asyncio.sleep(state.settings.shutdown_delay_s)
    grace = state.settings.drain_timeout_s
    log.info("gRPC draining: no new calls, %g s for those in flight", grace)
    await server.stop(grace)
