"""The standard ``grpc.health.v1.Health`` service, for Kubernetes gRPC probes and load balancers:
SERVING exactly when REST's readiness is 200 (models loaded and warmed up, not draining),
NOT_SERVING while loading, after a failed load and from the moment a drain begins.

Answers for the whole server (service ``""``, what a Kubernetes probe asks by default) and
for ``inference.GRPCInferenceService``; any other name is NOT_FOUND.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from grpc_health.v1 import health, health_pb2

from ..state import AppState

SERVICES: Final = ("", "inference.GRPCInferenceService")
#: How often readiness is read into the health service (seconds): the most a probe lags.
POLL_S: Final = 0.1


class Health:
    """Keeps a ``grpc_health`` servicer's statuses in step with the app's readiness."""

    def __init__(self, state: AppState) -> None:
        self._state = state
        self.servicer: Any = health.aio.HealthServicer()  # grpc_health has no type hints

    async def follow(self) -> None:
        """Set every service's status from readiness every ``POLL_S``; return once the app
        drains (NOT_SERVING then)."""
        last = None
        while True:
            if self._state.lifecycle.draining:
                await self.shutting_down()
                return
            serving = health_pb2.HealthCheckResponse.SERVING
            status = serving if self._state.ready else health_pb2.HealthCheckResponse.NOT_SERVING
            if status != last:
                for service in SERVICES:
                    await self.servicer.set(service, status)
                last = status
            await asyncio.sleep(POLL_S)

    async def shutting_down(self) -> None:
        """NOT_SERVING for good (the drain has begun)."""
        await self.servicer.enter_graceful_shutdown()
