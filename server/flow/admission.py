"""Admission at the door: a per-model budget of images in flight, taken before the body is read.

An image is *in flight* from the moment its request is admitted (before its body is read)
until the batch it ran in completes: reading, decoding, waiting in the batch queue, running.
Refusing beyond the budget *before* the body is read and decoded is what keeps an overloaded
server useful: the work it accepts finishes, the rest costs a fast 503 and nothing else.

One deadline covers the server's own part of the span: a request whose body was complete at
``t`` must reach the engine by ``t + timeout`` or it is dropped (503 ``queue_timeout``),
whether it was still decoding or waiting in the queue. The upload before ``t`` is the
client's time, bounded by the body limits instead (a slow upload is not read whole and then
refused for lateness). And a request is not admitted in the first place when the images
ahead of it would take longer than that to drain: a request the deadline would drop is
refused at the door instead, at no cost, rather than after waiting out the deadline.

While a backlog stands, every image in flight counts as ahead (the request's own too), so an
admitted request is expected to be answered, not only dispatched, within the timeout; with
the engines idle, the ``headroom`` images they take at once wait for nobody.

The drain rate that wait is judged by is the faster of two measures. The *finishing rate*
(images finishing per second while any are in flight, over the last ``RATE_WINDOW_S``) is what
the model did, which below saturation is what was asked, not what it can do. The *capacity*
is the finishing rate counted only while a backlog stood (more images past their upload than
the engines take at once, ``headroom``): then the model finishes as fast as it can, decodes
and engine runs sharing the cores together, so that is what the backlog will drain at. It is
remembered for ``CAPACITY_MEMORY_S``, so a burst after a quiet spell is judged by what the
model did when it was last busy, not by how little was asked meanwhile. (The engines' own
measured speed was tried instead and admitted too much: engine time alone ignores the decodes
that share the cores, and at 1.5x load it let in requests that then timed out in the queue.)
Plain Python, no I/O: used from the event loop only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from enum import Enum
from types import TracebackType

from contract.errors import QueueFull


class Stage(Enum):
    """Where an admitted request's images are."""

    DECODING = "decoding"  # admitted: body being read or images decoded
    QUEUED = "queued"  # handed to the batcher: waiting or running


#: Completions older than this (seconds) no longer count toward the rate.
RATE_WINDOW_S = 2.0
#: The rate is trusted once completions span this long (seconds) and number at least three.
RATE_MIN_SPAN_S = 0.25
#: How long (seconds of the clock) a capacity measured under a backlog keeps counting.
CAPACITY_MEMORY_S = 30.0


class Admission:
    """The image budget of one model. ``capacity`` images may be in flight at once."""

    def __init__(
        self,
        model: str,
        capacity: int,
        timeout: float,
        clock: Callable[[], float] | None = None,
        headroom: int = 0,
    ) -> None:
        """``timeout``: seconds from the body's arrival to dispatch; ``capacity`` >= 1;
        ``clock``: monotonic seconds (default: the running event loop's time); ``headroom``:
        images the engines take at once (instances x max batch), which wait for nobody."""
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.model = model
        self.capacity = capacity
        self.timeout = timeout
        self.headroom = headroom
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self.in_flight = 0
        self.decoding = 0
        """images admitted but not yet handed to the batcher (the decode backlog)"""
        self.working = 0
        """images whose body has arrived and that have not finished (decoding, queued, running)"""
        self._completions: deque[tuple[float, int]] = deque()
        # The backlog clock: seconds during which ``working`` exceeded ``headroom``, and the
        # completions seen meanwhile as (clock time, backlog-clock time, images).
        self._backlog_s = 0.0
        self._backlog_since: float | None = None
        self._backlogged: deque[tuple[float, float, int]] = deque()

    def admit(self, images: int = 1) -> Ticket:
        """Take ``images`` from the budget, or raise QueueFull (503, nothing taken)."""
        self._take(images)
        self.decoding += images
        return Ticket(self, images, self._clock() + self.timeout)

    def rate(self) -> float | None:
        """Images per second a backlog is expected to drain at: the faster of
        :meth:`finishing_rate` and :meth:`backlog_rate` (the capacity); None while neither is known."""
        rates = [r for r in (self.finishing_rate(), self.backlog_rate()) if r is not None]
        return max(rates) if rates else None

    def finishing_rate(self) -> float | None:
        """Images per second the model has been finishing while any were in flight, over the
        last ``RATE_WINDOW_S``; None until enough completions were seen."""
        events = self._prune(self._clock())
        if len(events) < 3 or events[-1][0] - events[0][0] < RATE_MIN_SPAN_S:
            return None
        # Counted after the first instant: a batch's requests all complete at the same time.
        finished = sum(n for t, n in events if t > events[0][0])
        return finished / (events[-1][0] - events[0][0])

    def backlog_rate(self) -> float | None:
        """Images per second the model finished while a backlog stood, over the backlog time of
        the last ``CAPACITY_MEMORY_S``; None until enough such completions were seen."""
        now = self._clock()
        events = self._backlogged
        while events and events[0][0] < now - CAPACITY_MEMORY_S:
            events.popleft()
        if len(events) < 3 or events[-1][1] - events[0][1] < RATE_MIN_SPAN_S:
            return None
        finished = sum(n for _, b, n in events if b > events[0][1])
        return finished / (events[-1][1] - events[0][1])

    def completed(self, images: int) -> None:
        """``images`` of a request finished (their batch ran). Feeds :meth:`rate`."""
        now = self._clock()
        self._completions.append((now, images))
        self._prune(now)
        if self._backlog_since is not None:
            self._backlogged.append((now, self._backlog_s + now - self._backlog_since, images))

    def _work(self, images: int) -> None:
        """``images`` more (or, negative, fewer) are past their upload; runs the backlog clock."""
        now = self._clock()
        was = self._backlog_since is not None
        self.working += images
        if self.working > self.headroom and not was:
            self._backlog_since = now
        elif self.working <= self.headroom and was:
            assert self._backlog_since is not None
            self._backlog_s += now - self._backlog_since
            self._backlog_since = None

    def _prune(self, now: float) -> deque[tuple[float, int]]:
        """Drop completions older than ``RATE_WINDOW_S``: a rate is recent or it is nothing."""
        events = self._completions
        while events and events[0][0] < now - RATE_WINDOW_S:
            events.popleft()
        return events

    def _idle(self) -> None:
        # Nothing in flight: the next interval between completions would count idle time.
        # (The capacity keeps its history: its clock ran only while there was a backlog.)
        self._completions.clear()

    def _take(self, images: int) -> None:
        if self.in_flight + images > self.capacity:
            raise QueueFull(
                f"model {self.model!r} is at capacity: {self.in_flight} of {self.capacity} "
                f"images in flight (decoding, queued or running), {images} more asked; "
                "retry later"
            )
        rate = self.rate()
        # Idle engines take up to ``headroom`` images at once. Behind a backlog they do not:
        # everything in flight drains at the rate first (subtracting the headroom there, a 1 s
        # timeout at 3x load saw ~30 requests/s time out in the queue: docs/RELIABILITY.md).
        backlog = self._backlog_since is not None
        ahead = self.in_flight + images - (0 if backlog else self.headroom)
        if self.in_flight and ahead > 0 and rate is not None:
            wait = ahead / rate
            if wait > self.timeout:
                raise QueueFull(
                    f"model {self.model!r} is finishing about {rate:.1f} images/s: this "
                    f"request's images would wait about {wait:.2f} s, more than its queue "
                    f"timeout of {self.timeout:g} s; retry later"
                )
        self.in_flight += images


class Ticket:
    """An admitted request's share of the budget; a context manager that gives it back."""

    def __init__(self, admission: Admission, images: int, deadline: float) -> None:
        self._admission = admission
        self.images = images
        self.deadline = deadline
        """event-loop time by which every image must have been dispatched to the engine;
        moved to ``timeout`` after the body's arrival by :meth:`body_complete`"""
        self.stage = Stage.DECODING
        self.refused = False
        """a chunk of this request was refused (so the refusal is counted once)"""
        self._arrived = False  # the body is complete: the images count as ``working``
        self._released = False

    def grow(self, images: int) -> None:
        """Take ``images`` more (a request turned out to hold several); QueueFull if over.
        Only while decoding (RuntimeError after :meth:`queued`: the stages would drift)."""
        if images <= 0:
            return
        if self.stage is not Stage.DECODING:
            raise RuntimeError("Ticket.grow after queued()")
        self._admission._take(images)
        self._admission.decoding += images
        self.images += images
        if self._arrived:
            self._admission._work(images)

    def queued(self) -> None:
        """The images left the decode stage (they are in the batch queue now)."""
        if self.stage is Stage.DECODING and not self._released:
            self._admission.decoding -= self.images
            self.stage = Stage.QUEUED

    def body_complete(self) -> None:
        """The request's body has arrived: its deadline counts from now (the upload was the
        client's time), and its images count toward the backlog. Idempotent."""
        if self._arrived or self._released:
            return
        self._arrived = True
        self.deadline = self._admission._clock() + self._admission.timeout
        self._admission._work(self.images)

    def remaining(self) -> float:
        """Seconds left before the deadline (may be negative)."""
        return self.deadline - self._admission._clock()

    def completed(self, images: int) -> None:
        """``images`` of this request ran (a chunk's batch completed)."""
        self._admission.completed(images)

    def release(self) -> None:
        """Give the images back. Idempotent."""
        if self._released:
            return
        self._released = True
        if self.stage is Stage.DECODING:
            self._admission.decoding -= self.images
        if self._arrived:
            self._admission._work(-self.images)
        self._admission.in_flight -= self.images
        if not self._admission.in_flight:
            self._admission._idle()

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
