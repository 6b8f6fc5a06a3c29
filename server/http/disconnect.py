"""Cancel work nobody will read: for clients that have gone away (the rest of a request once
one of its parts has failed is :func:`server.flow.pipeline.all_or_none`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from contract.errors import ClientDisconnected

T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise.

    Call only after the body has been read. Cancelling a request that waits in a batch
    queue removes it from the queue, so a vanished client holds no slot and costs no
    inference.

    Raises:
        ClientDisconnected: the client closed the connection first.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            if not watcher.cancelled() and watcher.done():
                raise ClientDisconnected("client disconnected before the answer was ready")
    return task.result()
