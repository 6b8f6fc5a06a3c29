"""Bounds on the request head, below the app: how many headers, how many bytes, how long.

uvicorn's httptools protocol accepts any number of headers of any size (200,000 headers and a
10 MB value were taken; a 2 MB header sent in 100-byte pieces cost 5.7 s of event-loop time,
the parser's buffering being quadratic) and starts its keep-alive timer only after a first
response, so a connection that never finishes its head is never closed. This subclass counts
what arrives before the end of the head and answers, then closes:

- ``431 headers_too_large`` past ``max_headers`` headers or ``max_head_bytes`` bytes (request
  line and headers; checked after each read, so at most one socket read more is parsed);
- ``408 header_timeout`` when the head is not complete ``head_timeout_s`` after the connection
  opened or the next request's first byte arrived.

Refusals are counted in ``resnet_connections_refused_total{reason}``. Without httptools
(uvicorn falls back to h11) only the byte bound applies, through h11's own limit.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from contract.errors import HeadersTooLarge, HeaderTimeout, ServerError, error_body
from server.metrics import Metrics

_REASONS = {HeadersTooLarge: "headers_too_large", HeaderTimeout: "header_timeout"}


def raw_response(err: ServerError) -> bytes:
    """``err`` as a complete HTTP/1.1 response that closes the connection."""
    body = json.dumps(error_body(err)).encode()
    reason = {408: "Request Timeout", 431: "Request Header Fields Too Large"}.get(err.status, "")
    head = (
        f"HTTP/1.1 {err.status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def guarded_protocol(
    *, max_headers: int, max_head_bytes: int, head_timeout_s: float, metrics: Metrics
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol class with these bounds (pass it as ``Config(http=...)``)."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True
            self._head_bytes = 0
            self._headers_seen = 0
            self._head_timer: asyncio.TimerHandle | None = None
            self._refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()  # a connection that never sends a byte is closed too

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            # A refusal raised in a parser callback comes back as a parser error, which
            # uvicorn answers with a 400: send_400_response below keeps ours instead.
            super().data_received(data)
            if self._refused or not self._in_head:
                return
            self._head_bytes += len(data)
            if self._head_bytes > max_head_bytes:
                self._refuse(
                    HeadersTooLarge(
                        f"request head exceeds {max_head_bytes} bytes (request line and headers)"
                    )
                )

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._head_bytes, self._headers_seen = True, 0, 0
            if self._head_timer is None:
                self._arm()  # the first byte of the next request on a kept-alive connection

        def on_header(self, name: bytes, value: bytes) -> None:
            self._headers_seen += 1
            if self._headers_seen > max_headers:
                self._refuse(HeadersTooLarge(f"request has more than {max_headers} headers"))
                raise _Refused  # stops the parser: this request never reaches the app
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._disarm()
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            if not self._refused:  # the parser error that our own refusal raised
                super().send_400_response(msg)

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(head_timeout_s, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self._in_head and not self._refused and not self.transport.is_closing():
                self._refuse(
                    HeaderTimeout(f"request head not received within {head_timeout_s:g} s")
                )

        def _refuse(self, err: ServerError) -> None:
            self._refused = True
            self._disarm()
            metrics.connections_refused.labels(_REASONS[type(err)]).inc()
            if not self.transport.is_closing():
                self.transport.write(raw_response(err))
                self.transport.close()

    return GuardedHttpToolsProtocol


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a refused request."""
