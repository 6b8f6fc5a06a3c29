"""ASGI middleware that protects the inference endpoints before any route code runs:
body size (by header, then counted while streaming), a deadline for the whole body (slow
clients), a cap on concurrent inference requests and on the body bytes they hold in memory
(fast 503 with ``Retry-After`` instead of piling up). Refusals made here are counted by the
``on_refusal`` callback, since no route sees them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.errors import (
    BodyTimeout,
    BodyTooLarge,
    ClientDisconnected,
    Overloaded,
    ServerError,
    error_body,
)

#: Seconds a body may take before the minimum upload rate applies (connection set-up, TCP
#: slow start, a client that computes its multipart framing first).
UPLOAD_GRACE_S = 2.0


def is_inference(scope: Scope) -> bool:
    """A POST to ``/predict...`` or a v2 ``.../infer``: what the limits and counters cover."""
    path: str = scope.get("path", "")
    return scope["method"] == "POST" and (path.startswith("/predict") or path.endswith("/infer"))


async def send_error(send: Send, err: ServerError) -> None:
    """Answer with the server's JSON error shape without involving the app."""
    body = json.dumps(error_body(err)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if err.retry_after is not None:
        headers.append((b"retry-after", str(err.retry_after).encode()))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class LimitsMiddleware:
    """Applies to POST inference paths only; health, metrics and metadata always get through.

    Body bytes in flight: a request is refused at the door if its declared ``Content-Length``
    would not fit in ``max_bytes_in_flight`` now, and reserves bytes as they arrive (a slow
    upload declaring 20 MiB holds what it has sent, not 20 MiB); the reservation is returned
    when the response is sent. A body must keep arriving at ``min_bytes_per_s`` on average
    once ``UPLOAD_GRACE_S`` have passed, and arrive whole within ``body_timeout_s``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        body_timeout_s: float,
        max_concurrent: int,
        max_bytes_in_flight: int,
        min_bytes_per_s: float = 0.0,
        on_refusal: Callable[[Scope, ServerError], None] = lambda scope, err: None,
    ) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.timeout = body_timeout_s
        self.max_concurrent = max_concurrent
        self.max_bytes = max_bytes_in_flight
        self.min_rate = min_bytes_per_s
        self.on_refusal = on_refusal
        self.active = 0
        self.bytes_in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_inference(scope):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"content-length", b"")
        declared = int(header) if header.isdigit() else 0
        refusal = self._refusal(declared)
        if refusal is not None:
            self.on_refusal(scope, refusal)
            await send_error(send, refusal)
            return
        self.active += 1
        reservation = [0]  # grows as the body arrives
        try:
            start = asyncio.get_running_loop().time()
            await self.app(scope, self._guarded(receive, start, reservation), send)
        finally:
            self.active -= 1
            self.bytes_in_flight -= reservation[0]

    def _refusal(self, declared: int) -> ServerError | None:
        if declared > self.max_body:
            return self._too_large()
        if self.active >= self.max_concurrent:
            return Overloaded(f"server busy: {self.active} requests in flight")
        if self.bytes_in_flight + declared > self.max_bytes:
            return self._bytes_busy()
        return None

    def _too_large(self) -> BodyTooLarge:
        return BodyTooLarge(f"request body exceeds the limit of {self.max_body} bytes")

    def _bytes_busy(self) -> Overloaded:
        return Overloaded(
            f"server busy: {self.bytes_in_flight} body bytes in flight (limit {self.max_bytes})"
        )

    def _guarded(self, receive: Receive, start: float, reservation: list[int]) -> Receive:
        """``receive`` with the size limits, one deadline (loop time) for the whole body, and
        the minimum average rate after the grace period.

        A per-chunk timeout would let a client trickling 1 byte every 100 ms hold a slot and
        a socket for as long as it likes.
        """
        received, complete = 0, False
        deadline = start + self.timeout

        async def guarded() -> Message:
            nonlocal received, complete
            if complete:  # body done: later reads only wait for a disconnect, no timeout
                return await receive()
            # The time by which the bytes so far, plus the next, keep the average rate up.
            slow_at = (
                start + UPLOAD_GRACE_S + received / self.min_rate if self.min_rate else deadline
            )
            try:
                async with asyncio.timeout_at(min(deadline, slow_at)):
                    message = await receive()
            except TimeoutError:
                if slow_at < deadline:
                    elapsed = asyncio.get_running_loop().time() - start
                    raise BodyTimeout(
                        f"request body arriving at {received / elapsed:.0f} bytes/s, below the "
                        f"minimum of {self.min_rate:g} bytes/s"
                    ) from None
                raise BodyTimeout(f"request body not received within {self.timeout:g} s") from None
            if message["type"] == "http.disconnect":
                # Starlette would raise its own ClientDisconnect, which the app counts (and
                # logs) as an internal error; this is the client's doing.
                raise ClientDisconnected("client disconnected while sending the body")
            received += len(message.get("body", b""))
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            if received > self.max_body:
                raise self._too_large()
            if received > reservation[0]:  # undeclared (chunked) or longer than declared
                extra = received - reservation[0]
                if self.bytes_in_flight + extra > self.max_bytes:
                    raise self._bytes_busy()
                self.bytes_in_flight += extra
                reservation[0] = received
            return message

        return guarded
