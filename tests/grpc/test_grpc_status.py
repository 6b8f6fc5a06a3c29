"""The gRPC side of the one error mapping (contract/errors.py): each domain error's status code,
and the retry-after trailing metadata of the retryable refusals."""

from __future__ import annotations

import grpc
import pytest

from contract import errors as e
from server.grpc.status import code_of, trailing_metadata

EXPECTED = {
    e.InvalidImage: (grpc.StatusCode.INVALID_ARGUMENT, None),
    e.UnsupportedImageFormat: (grpc.StatusCode.INVALID_ARGUMENT, None),
    e.ImageTooLarge: (grpc.StatusCode.INVALID_ARGUMENT, None),
    e.ImageTooCostly: (grpc.StatusCode.INVALID_ARGUMENT, None),
    e.HeadersTooLarge: (grpc.StatusCode.INVALID_ARGUMENT, None),
    e.HeaderTimeout: (grpc.StatusCode.DEADLINE_EXCEEDED, None),
    e.InvalidHost: (grpc.StatusCode.INVALID_ARGUMENT, None),
    e.BodyTooLarge: (grpc.StatusCode.RESOURCE_EXHAUSTED, None),
    e.BodyTimeout: (grpc.StatusCode.DEADLINE_EXCEEDED, None),
    e.BadRequest: (grpc.StatusCode.INVALID_ARGUMENT, None),
    e.InvalidParameter: (grpc.StatusCode.INVALID_ARGUMENT, None),
    e.Unauthorized: (grpc.StatusCode.UNAUTHENTICATED, None),
    e.ClientDisconnected: (grpc.StatusCode.CANCELLED, None),
    e.UnknownModel: (grpc.StatusCode.NOT_FOUND, None),
    e.RepositoryDisabled: (grpc.StatusCode.FAILED_PRECONDITION, None),
    e.ModelLoadFailed: (grpc.StatusCode.FAILED_PRECONDITION, None),
    e.NotReady: (grpc.StatusCode.UNAVAILABLE, "1"),
    e.QueueFull: (grpc.StatusCode.RESOURCE_EXHAUSTED, "1"),
    e.QueueTimeout: (grpc.StatusCode.UNAVAILABLE, "1"),
    e.DeadlineExceeded: (grpc.StatusCode.DEADLINE_EXCEEDED, None),
    e.Overloaded: (grpc.StatusCode.RESOURCE_EXHAUSTED, "1"),
    e.ShuttingDown: (grpc.StatusCode.UNAVAILABLE, "5"),
    e.InferenceFailed: (grpc.StatusCode.INTERNAL, None),
    e.NotFound: (grpc.StatusCode.UNIMPLEMENTED, None),
    e.MethodNotAllowed: (grpc.StatusCode.UNIMPLEMENTED, None),
}


def test_every_domain_error_is_mapped() -> None:
    assert set(e.ServerError.__subclasses__()) == set(EXPECTED)


@pytest.mark.parametrize(
    ("cls", "expected"), EXPECTED.items(), ids=lambda v: getattr(v, "__name__", "")
)
def test_status_and_retry_after(
    cls: type[e.ServerError], expected: tuple[grpc.StatusCode, str | None]
) -> None:
    code, retry = expected
    err = cls("message")
    assert code_of(err) is code
    expected = (
        ()
        if retry is None
        else (("retry-after", retry), ("grpc-retry-pushback-ms", str(int(retry) * 1000)))
    )
    assert trailing_metadata(err) == expected
