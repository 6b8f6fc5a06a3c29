"""Admission at the door: a per-model budget of images in flight, taken before the body is read.

An image is *in flight* from the moment its request is admitted (before its body is read)
until the batch it ran in completes: reading, decoding, waiting in the batch queue, running.
Refusing beyond the budget *before* the body is read and decoded is what keeps an overloaded
server useful: the work it accepts finishes, the rest costs a fast 503 and nothing else.

One deadline covers the whole span: a request admitted at ``t`` must reach the engine by
``t + timeout`` or it is dropped (503 ``queue_timeout``), whether it was still decoding or
waiting in the queue. Plain Python, no I/O: used from the event loop only.
"""

from __future__ import annotations

import asyncio
from enum import Enum
from types import TracebackType

from .errors import QueueFull


class Stage(Enum):
    """Where an admitted request's images are."""

    DECODING = "decoding"  # admitted: body being read or images decoded
    QUEUED = "queued"  # handed to the batcher: waiting or running


class Admission:
    """The image budget of one model. ``capacity`` images may be in flight at once."""

    def __init__(self, model: str, capacity: int, timeout: float) -> None:
        """``timeout``: seconds from admission to dispatch; ``capacity`` >= 1."""
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.model = model
        self.capacity = capacity
        self.timeout = timeout
        self.in_flight = 0
        self.decoding = 0
        """images admitted but not yet handed to the batcher (the decode backlog)"""

    def admit(self, images: int = 1) -> Ticket:
        """Take ``images`` from the budget, or raise QueueFull (503, nothing taken)."""
        self._take(images)
        self.decoding += images
        deadline = asyncio.get_running_loop().time() + self.timeout
        return Ticket(self, images, deadline)

    def _take(self, images: int) -> None:
        if self.in_flight + images > self.capacity:
            raise QueueFull(
                f"model {self.model!r} is at capacity: {self.in_flight} of {self.capacity} "
                f"images in flight (decoding, queued or running), {images} more asked; "
                "retry later"
            )
        self.in_flight += images


class Ticket:
    """An admitted request's share of the budget; a context manager that gives it back."""

    def __init__(self, admission: Admission, images: int, deadline: float) -> None:
        self._admission = admission
        self.images = images
        self.deadline = deadline
        """event-loop time by which every image must have been dispatched to the engine"""
        self.stage = Stage.DECODING
        self._released = False

    def grow(self, images: int) -> None:
        """Take ``images`` more (a request turned out to hold several); QueueFull if over."""
        if images <= 0:
            return
        self._admission._take(images)
        self._admission.decoding += images
        self.images += images

    def queued(self) -> None:
        """The images left the decode stage (they are in the batch queue now)."""
        if self.stage is Stage.DECODING and not self._released:
            self._admission.decoding -= self.images
            self.stage = Stage.QUEUED

    def remaining(self) -> float:
        """Seconds left before the deadline (may be negative)."""
        return self.deadline - asyncio.get_running_loop().time()

    def release(self) -> None:
        """Give the images back. Idempotent."""
        if self._released:
            return
        self._released = True
        if self.stage is Stage.DECODING:
            self._admission.decoding -= self.images
        self._admission.in_flight -= self.images

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
