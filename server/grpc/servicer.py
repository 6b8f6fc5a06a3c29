"""``inference.GRPCInferenceService``: the v2 RPCs on the app's own models, pipeline and
metrics. Each RPC does what its REST twin in :mod:`server.http.routes.v2` does, through the same
functions; errors become gRPC statuses by :mod:`server.grpc.status`.

``ModelInfer``: at most ``max_concurrent_requests`` calls at once (REST's limit, counted
apart: health and metadata calls are never refused for it), the API key (metadata
``authorization: Bearer <key>`` or ``x-api-key``), the
model's admission ticket before anything of the payload is looked at, the call's deadline (if
sooner) as the request's: the pipeline's one entry (:meth:`server.flow.pipeline.Pipeline.infer`:
admission, decode in the pool, the batcher). A call the client cancels, or whose deadline passes, is cancelled by grpc: its
rows leave the batch queue unrun, as a REST request's do when its client disconnects.
Counted in ``resnet_requests_total{endpoint="grpc_infer"}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import grpc

from contract.errors import (
    BadRequest,
    ClientDisconnected,
    Overloaded,
    ServerError,
)
from server.auth import check_api_key
from server.flow.admission import Ticket
from server.flow.pipeline import Images
from server.grpc import status, translate
from server.grpc.proto import grpc_service_pb2 as pb
from server.metrics import UNKNOWN_MODEL
from server.models.repository import ServedModel
from server.observe import observe_request
from server.state import AppState
from server.v2 import describe, inference
from server.v2.stats import Samples, model_stats

log = logging.getLogger(__name__)

ENDPOINT: Final = "grpc_infer"
# Typed contents this large are converted off the event loop (raw contents cost nothing).
_OFFLOAD_BYTES: Final = 64 * 1024
_T = TypeVar("_T")
Context = grpc.aio.ServicerContext[Any, Any]


async def _answer(context: Context, work: Awaitable[_T]) -> _T:
    """Await ``work``; a ServerError ends the call with its status, anything else with
    INTERNAL "internal error" (traceback logged)."""
    try:
        return await work
    except ServerError as e:
        if e.grpc_status == "INTERNAL":
            log.error("gRPC %s", e.message)
        await status.abort(context, e)
    except grpc.aio.AbortError:
        raise
    except Exception:
        log.exception("unhandled error in a gRPC call")
        await context.abort(grpc.StatusCode.INTERNAL, status.INTERNAL_ERROR)


def _key_metadata(context: Context) -> tuple[str, str]:
    """The call's ``authorization`` and ``x-api-key`` metadata ("" when absent)."""
    found = {"authorization": "", "x-api-key": ""}
    for key, value in context.invocation_metadata() or ():
        if key in found and isinstance(value, str):
            found[key] = value
    return found["authorization"], found["x-api-key"]


def _deadline(context: Context) -> float | None:
    """The call's deadline in event-loop time, or None when it has none."""
    remaining: float | None = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining


def _unimplemented(name: str) -> Callable[[Any, Any, Context], Awaitable[None]]:
    async def rpc(self: Any, request: Any, context: Context) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{name} is not implemented by resnet-server (docs/V2_PROTOCOL.md lists what is)",
        )

    return rpc


class InferenceServicer:
    """The servicer ``add_GRPCInferenceServiceServicer_to_server`` registers (method names
    are the RPCs')."""

    def __init__(self, state: AppState) -> None:
        self._state = state
        self._calls = 0
        """ModelInfer calls in flight (at most ``max_concurrent_requests``)"""

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._state.ready)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        """Ready: loaded, warmed up and not draining. An unknown model or version is not
        ready (false, as REST's 404 reads to tritonclient), not an error."""
        state = self._state
        try:
            model = describe.model_at(state, request.name, request.version)
        except ServerError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=model.ready and not state.lifecycle.draining)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return translate.server_metadata(describe.server_metadata())

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        async def work() -> pb.ModelMetadataResponse:
            model = describe.model_at(self._state, request.name, request.version)
            versions = self._state.repository.versions_of(model.name)
            return translate.model_metadata(describe.model_metadata(model, versions))

        return await _answer(context, work())

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Context
    ) -> pb.ModelConfigResponse:
        async def work() -> pb.ModelConfigResponse:
            model = describe.model_at(self._state, request.name, request.version)
            return translate.model_config(describe.model_config(self._state, model))

        return await _answer(context, work())

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        """One model's statistics, or every model's when ``name`` is empty."""

        async def work() -> pb.ModelStatisticsResponse:
            state = self._state
            if state.settings.metrics_auth:  # statistics are metrics: behind the key with them
                check_api_key(state.settings.api_key, *_key_metadata(context))
            if request.name:
                models = [describe.model_at(state, request.name, request.version)]
            elif request.version:
                raise BadRequest("statistics of a version need the model's name")
            else:
                models = state.repository.all_served()
            samples = Samples((await state.scrapes.snapshot()).families)
            return translate.model_statistics([model_stats(samples, m) for m in models])

        return await _answer(context, work())

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        state = self._state

        async def work() -> pb.ModelInferResponse:
            configured = state.repository.configured
            async with observe_request(state.metrics, ENDPOINT, request.model_name, configured):
                if self._calls >= state.settings.max_concurrent_requests:
                    label = (
                        request.model_name if request.model_name in configured else UNKNOWN_MODEL
                    )
                    state.metrics.rejected.labels(label, Overloaded.code).inc()
                    raise Overloaded(f"server busy: {self._calls} gRPC inference calls in flight")
                self._calls += 1
                try:
                    return await self._infer(request, context)
                except asyncio.CancelledError:
                    # grpc cancels the handler when the client cancels or its deadline passes
                    # (``context.cancelled()`` still reads False then); the server itself
                    # cancels calls only when a drain's grace runs out.
                    if state.lifecycle.draining:
                        raise
                    # Nobody reads this: it counts the call as REST counts a vanished client.
                    raise ClientDisconnected(
                        "client cancelled the call, or its deadline passed, before the answer "
                        "was ready"
                    ) from None
                finally:
                    self._calls -= 1

        return await _answer(context, work())

    async def _infer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        state = self._state
        check_api_key(state.settings.api_key, *_key_metadata(context))
        model = describe.model_at(state, request.model_name, request.model_version, ready=True)

        async def read(ticket: Ticket) -> tuple[inference.Prepared, Images]:
            # Admitted before the payload is looked at; the message arrived whole, so its
            # deadline counts from now and its images count toward the backlog.
            ticket.body_complete()
            if not request.raw_input_contents and request.ByteSize() > _OFFLOAD_BYTES:
                prepared = await asyncio.to_thread(_prepare, model, request)
            else:
                prepared = _prepare(model, request)
            return prepared, inference.images(prepared)

        # The call's deadline, when sooner than queue_timeout's, is the request's (grpc may
        # also cancel the call first).
        prepared, inferred = await state.pipeline.infer(model, read, deadline=_deadline(context))
        return translate.infer_response(model, prepared, inferred.scores)

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        """As ``POST /v2/repository/index`` (behind the API key when one is set)."""

        async def work() -> pb.RepositoryIndexResponse:
            check_api_key(self._state.settings.api_key, *_key_metadata(context))
            entries = await self._state.control.index(request.ready)
            return translate.repository_index(entries)

        return await _answer(context, work())

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        """As ``POST /v2/repository/models/{name}/load``."""

        async def work() -> pb.RepositoryModelLoadResponse:
            check_api_key(self._state.settings.api_key, *_key_metadata(context))
            await self._state.control.load(request.model_name, dict(request.parameters))
            return pb.RepositoryModelLoadResponse()

        return await _answer(context, work())

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        """As ``POST /v2/repository/models/{name}/unload`` (``unload_dependents`` is
        accepted: no model here has dependents)."""

        async def work() -> pb.RepositoryModelUnloadResponse:
            check_api_key(self._state.settings.api_key, *_key_metadata(context))
            unknown = sorted(set(request.parameters) - {"unload_dependents"})
            if unknown:
                raise BadRequest(f"unload parameters {unknown[:8]} are not supported")
            await self._state.control.unload(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await _answer(context, work())

    ModelStreamInfer = _unimplemented("ModelStreamInfer")
    SystemSharedMemoryStatus = _unimplemented("SystemSharedMemoryStatus")
    SystemSharedMemoryRegister = _unimplemented("SystemSharedMemoryRegister")
    SystemSharedMemoryUnregister = _unimplemented("SystemSharedMemoryUnregister")
    CudaSharedMemoryStatus = _unimplemented("CudaSharedMemoryStatus")
    CudaSharedMemoryRegister = _unimplemented("CudaSharedMemoryRegister")
    CudaSharedMemoryUnregister = _unimplemented("CudaSharedMemoryUnregister")
    TraceSetting = _unimplemented("TraceSetting")
    LogSettings = _unimplemented("LogSettings")


def _prepare(model: ServedModel, request: pb.ModelInferRequest) -> inference.Prepared:
    """Check ``request`` against ``model`` as REST checks a body. Blocking (CPU)."""
    return inference.prepare_parsed(model, translate.parsed_request(request))
