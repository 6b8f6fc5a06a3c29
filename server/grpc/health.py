"""The standard ``grpc.health.v1.Health`` service, for Kubernetes gRPC probes and load balancers:
SERVING exactly when REST's readiness is 200 (models loaded and warmed up, not draining),
NOT_SERVING while loading, after a failed load and from the moment a drain begins.

Answers for the whole server (service ``""``, what a Kubernetes probe asks by default) and
for ``inference.GRPCInferenceService``; any other name is NOT_FOUND. ``Check`` reads readiness
at the call; ``Watch`` streams the changes, seen within ``POLL_S``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from grpc_health.v1 import health, health_pb2

from server.state import AppState

SERVICES: Final = ("", "inference.GRPCInferenceService")
#: How often readiness is read for ``Watch`` streams (seconds).
POLL_S: Final = 0.1


class Health:
    """Keeps a ``grpc_health`` servicer's statuses in step with the app's readiness;
    ``servicer`` is what ``add_HealthServicer_to_server`` registers."""

    def __init__(self, state: AppState) -> None:
        self._state = state
        self._inner: Any = health.aio.HealthServicer()  # grpc_health has no type hints
        self._last: int | None = None
        self.servicer = _Servicer(self)

    async def refresh(self) -> None:
        """Set every service's status from readiness now (ignored once shutting down)."""
        serving = health_pb2.HealthCheckResponse.SERVING
        status = serving if self._state.ready else health_pb2.HealthCheckResponse.NOT_SERVING
        if status != self._last:
            for service in SERVICES:
                await self._inner.set(service, status)
            self._last = status

    async def follow(self) -> None:
        """Refresh every ``POLL_S``; return once the app drains (NOT_SERVING then, for good)."""
        while True:
            if self._state.lifecycle.draining:
                await self.shutting_down()
                return
            await self.refresh()
            await asyncio.sleep(POLL_S)

    async def shutting_down(self) -> None:
        """NOT_SERVING for good (the drain has begun)."""
        await self._inner.enter_graceful_shutdown()


class _Servicer:
    """The library's servicer, with ``Check`` reading readiness at the call rather than at
    the last poll (a probe right after REST turned ready must see SERVING too)."""

    def __init__(self, owner: Health) -> None:
        self._owner = owner

    async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 (the RPC's name)
        await self._owner.refresh()
        return await self._owner._inner.Check(request, context)

    async def Watch(self, request: Any, context: Any) -> None:  # noqa: N802 (the RPC's name)
        await self._owner._inner.Watch(request, context)
