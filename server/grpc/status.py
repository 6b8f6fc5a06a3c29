"""A :class:`~contract.errors.ServerError` as a gRPC status: the code its class names
(``grpc_status``, chosen in :mod:`contract.errors`), its message as the details, and for the
retryable refusals (queue full, timed out, not ready, overloaded, shutting down) a
``retry-after`` trailing metadata entry in seconds, as REST's ``Retry-After`` header, and
gRPC's ``grpc-retry-pushback-ms``."""

from __future__ import annotations

from typing import NoReturn

import grpc

from contract.errors import ServerError

INTERNAL_ERROR = "internal error"


def code_of(err: ServerError) -> grpc.StatusCode:
    return grpc.StatusCode[err.grpc_status]


def trailing_metadata(err: ServerError) -> tuple[tuple[str, str], ...]:
    """``retry-after`` (seconds, REST's header) and gRPC's own retry pushback
    (``grpc-retry-pushback-ms``, which a client with a retry policy waits before retrying)."""
    if err.retry_after is None:
        return ()
    return (
        ("retry-after", str(err.retry_after)),
        ("grpc-retry-pushback-ms", str(err.retry_after * 1000)),
    )


async def abort(context: grpc.aio.ServicerContext[object, object], err: ServerError) -> NoReturn:
    """End the call with ``err``'s status (raises grpc's abort exception)."""
    await context.abort(code_of(err), err.message, trailing_metadata(err))
