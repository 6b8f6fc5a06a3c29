"""Optional API-key check for the inference endpoints (off unless ``api_key`` is set)."""

from __future__ import annotations

import secrets
from typing import Annotated, cast

from fastapi import Depends, Request
from pydantic import SecretStr

from contract.errors import Unauthorized
from server.state import AppState, get_state


async def require_api_key(request: Request, state: Annotated[AppState, Depends(get_state)]) -> None:
    """``async`` so that FastAPI runs it on the event loop: a plain ``def`` dependency costs a
    thread-pool hop per request (measured: half the loop's CPU per /predict).

    Accept ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; constant-time compare.

    Raises:
        Unauthorized: a key is configured and the request's is missing or wrong.
    """
    headers = request.headers
    check_api_key(
        state.settings.api_key, headers.get("authorization", ""), headers.get("x-api-key", "")
    )


def authorized_state(request: Request) -> AppState:
    """The app's state, once the request's key checks out: :func:`require_api_key` for a
    :class:`server.http.direct.DirectRoute`, which runs no dependencies.

    Raises:
        Unauthorized: a key is configured and the request's is missing or wrong (the error
            handler counts it, as it counts a dependency's: before the route counts anything).
    """
    state = cast(AppState, request.app.state.server)
    headers = request.headers
    check_api_key(
        state.settings.api_key, headers.get("authorization", ""), headers.get("x-api-key", "")
    )
    return state


def check_api_key(expected: SecretStr | None, authorization: str, x_api_key: str) -> None:
    """The same check as :func:`require_api_key`, for callers outside FastAPI (gRPC metadata):
    ``authorization`` is ``Bearer <key>`` or ``x_api_key`` the key; constant-time compare.

    Raises:
        Unauthorized: a key is configured and the one given is missing or wrong.
    """
    if expected is None:
        return
    given = authorization[7:].strip() if authorization.lower().startswith("bearer ") else x_api_key
    if not secrets.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise Unauthorized("missing or invalid API key (send 'Authorization: Bearer <key>')")
