"""Domain errors: the one place their HTTP status and gRPC code are chosen.

Every error the server raises on purpose is a :class:`ServerError` with a stable
machine-readable ``code``, an HTTP ``status`` and a gRPC status (``grpc_status``, the name of a
``grpc.StatusCode``; :mod:`server.grpc.status` turns it into one). The HTTP handlers
(:func:`server.http.errors.install_handlers`) turn them into ``{"error": "<message>", "code":
"<code>"}``; anything else is a 500 that says only "internal error" and logs the traceback.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar


class ServerError(Exception):
    """Base of all expected errors. ``message`` is safe to show to the client."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    grpc_status: ClassVar[str] = "INTERNAL"
    retry_after: ClassVar[int | None] = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidImage(ServerError):
    """The bytes are not a decodable image (empty, truncated, corrupt)."""

    status = 400
    code = "invalid_image"
    grpc_status = "INVALID_ARGUMENT"


class UnsupportedImageFormat(ServerError):
    """The bytes are a format this server does not decode (SVG, PDF, ...)."""

    status = 415
    code = "unsupported_media_type"
    grpc_status = "INVALID_ARGUMENT"


class ImageTooLarge(ServerError):
    """The image declares more pixels than ``max_image_pixels`` (checked before decoding)."""

    status = 413
    code = "image_too_large"
    grpc_status = "INVALID_ARGUMENT"


class ImageTooCostly(ServerError):
    """Decoding the image cost more CPU time or memory than its declared size allows, or its
    container structure (scans, strip tables) is far beyond what such an image needs."""

    status = 422
    code = "image_too_costly"
    grpc_status = "INVALID_ARGUMENT"


class BodyTooLarge(ServerError):
    """The request body exceeds ``max_body_bytes``."""

    status = 413
    code = "body_too_large"
    grpc_status = "RESOURCE_EXHAUSTED"


class BodyTimeout(ServerError):
    """The client sent its body too slowly."""

    status = 408
    code = "body_timeout"
    grpc_status = "DEADLINE_EXCEEDED"


class HeadersTooLarge(ServerError):
    """The request head has more headers, or more bytes, than the server takes."""

    status = 431
    code = "headers_too_large"
    grpc_status = "INVALID_ARGUMENT"


class HeaderTimeout(ServerError):
    """The request head did not arrive in time (a connection that sends nothing, or slowly)."""

    status = 408
    code = "header_timeout"
    grpc_status = "DEADLINE_EXCEEDED"


class BadRequest(ServerError):
    """A malformed request: wrong fields, shapes, datatypes, counts."""

    status = 400
    code = "bad_request"
    grpc_status = "INVALID_ARGUMENT"


class InvalidParameter(ServerError):
    """A query or body parameter out of its range (for example ``top_k``)."""

    status = 422
    code = "invalid_parameter"
    grpc_status = "INVALID_ARGUMENT"


class Unauthorized(ServerError):
    """Missing or wrong API key."""

    status = 401
    code = "unauthorized"
    grpc_status = "UNAUTHENTICATED"


class InvalidHost(ServerError):
    """The request's Host is not on ``allowed_hosts`` (DNS rebinding)."""

    status = 400
    code = "invalid_host"
    grpc_status = "INVALID_ARGUMENT"


class ClientDisconnected(ServerError):
    """The client went away before its answer was ready; its queued work was cancelled."""

    status = 499  # nginx's "client closed request": nobody reads it, but logs and metrics do
    code = "client_disconnected"
    grpc_status = "CANCELLED"


class UnknownModel(ServerError):
    """No model (or model version) of that name is served."""

    status = 404
    code = "unknown_model"
    grpc_status = "NOT_FOUND"


class RepositoryDisabled(ServerError):
    """The repository API is off for this ``model_control`` (the message says how to turn it
    on)."""

    status = 403
    code = "repository_disabled"
    grpc_status = "FAILED_PRECONDITION"


class ModelLoadFailed(ServerError):
    """A repository load found a version that cannot serve (unreadable, corrupt, below its
    agreement floors): it takes no traffic and what served before still serves."""

    status = 400
    code = "model_load_failed"
    grpc_status = "FAILED_PRECONDITION"


class NotReady(ServerError):
    """The server or model is not ready (loading, warming up, or shutting down)."""

    status = 503
    code = "not_ready"
    grpc_status = "UNAVAILABLE"
    retry_after = 1


class QueueFull(ServerError):
    """The model's queue holds ``max_queue_size`` images already."""

    status = 503
    code = "queue_full"
    grpc_status = "RESOURCE_EXHAUSTED"
    retry_after = 1


class QueueTimeout(ServerError):
    """The request waited longer than ``queue_timeout`` without being run; it was dropped."""

    status = 503
    code = "queue_timeout"
    grpc_status = "UNAVAILABLE"
    retry_after = 1


class DeadlineExceeded(ServerError):
    """The caller's own deadline (a gRPC call's) passed before the request was run; dropped.
    (REST requests have no deadline of their own: theirs is ``queue_timeout``.)"""

    status = 504
    code = "deadline_exceeded"
    grpc_status = "DEADLINE_EXCEEDED"


class Overloaded(ServerError):
    """Too many inference requests in flight (``max_concurrent_requests``)."""

    status = 503
    code = "overloaded"
    grpc_status = "RESOURCE_EXHAUSTED"
    retry_after = 1


class ShuttingDown(ServerError):
    """The server is draining and takes no new work."""

    status = 503
    code = "shutting_down"
    grpc_status = "UNAVAILABLE"
    retry_after = 5


class InferenceFailed(ServerError):
    """The batch this request was in failed inside the runtime (traceback in the log)."""

    status = 500
    code = "inference_failed"
    grpc_status = "INTERNAL"


class NotFound(ServerError):
    """No route at that path (the router's 404, not an unknown model's)."""

    status = 404
    code = "not_found"
    grpc_status = "UNIMPLEMENTED"


class MethodNotAllowed(ServerError):
    """The path exists, not with that method."""

    status = 405
    code = "method_not_allowed"
    grpc_status = "UNIMPLEMENTED"


def error_body(err: ServerError) -> dict[str, str]:
    """The one error JSON: ``{"error": <message for people>, "code": <stable code>}``."""
    return {"error": err.message, "code": err.code}


def validation_problems(
    errors: Iterable[Mapping[str, Any]], default: str, limit: int | None = 5
) -> list[str]:
    """``"where: what"`` for each of pydantic's ``ValidationError.errors()`` (the first
    ``limit``; all with None): the location's parts joined by dots, each cut to 64
    characters (they may come from the request), or ``default`` where there is none."""
    problems = []
    for err in list(errors)[:limit]:
        where = ".".join(str(x)[:64] for x in err.get("loc", ())) or default
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    return problems


def error_headers(err: ServerError) -> dict[str, str]:
    return {} if err.retry_after is None else {"Retry-After": str(err.retry_after)}
