"""A :class:`~server.errors.ServerError` as a gRPC status: the code its class names
(``grpc_status``, chosen in :mod:`server.errors`), its message as the details, and for the
retryable refusals (queue full, timed out, not ready, shutting down) a ``retry-after``
trailing metadata entry in seconds, as REST's ``Retry-After`` header."""

from __future__ import annotations

from typing import NoReturn

import grpc

from ..errors import ServerError

INTERNAL_ERROR = "internal error"


def code_of(err: ServerError) -> grpc.StatusCode:
    return grpc.StatusCode[err.grpc_status]


def trailing_metadata(err: ServerError) -> tuple[tuple[str, str], ...]:
    return () if err.retry_after is None else (("retry-after", str(err.retry_after)),)


async def abort(context: grpc.aio.ServicerContext[object, object], err: ServerError) -> NoReturn:
    """End the call with ``err``'s status (raises grpc's abort exception)."""
    await context.abort(code_of(err), err.message, trailing_metadata(err))
