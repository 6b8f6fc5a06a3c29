"""Overload: open-loop arrivals at a multiple of the measured peak, against a server whose
queue timeout makes the deadline matter on a small machine.

What is checked (reported as measured against the goal, never asserted): the accepted
requests' p99 against twice the queue timeout; every refusal a 503 with ``Retry-After``,
answered in under 50 ms (client side per refusal; server side from its request-duration
histogram and refusal counters); the server's RSS (``/proc/PID/status``, sampled every
50 ms) against the bound its settings imply.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from contract.images.transform import MAX_RESIZED_PIXELS
from server.settings import Settings

from . import procs
from .load import PhaseResult

#: A refusal must be answered within this (client side), seconds.
FAST_REFUSAL_S = 0.05


@dataclass(frozen=True)
class Limits:
    """The server settings that bound its memory and its queue in the phase."""

    queue_timeout_ms: float
    max_queue_size: int
    max_batch_size: int
    instances: int
    admission_capacity: int
    """images in flight per model: max_queue_size + instances x max_batch_size"""
    max_concurrent_requests: int
    max_body_bytes_in_flight: int
    max_image_pixels: int
    preprocess_threads: int
    intra_op_threads: int

    @classmethod
    def of(cls, flags: dict[str, str]) -> Limits:
        """From our server's command-line flags (``--name value``), defaults otherwise."""
        s = Settings.model_validate({k.replace("-", "_"): v for k, v in flags.items()})
        capacity = s.max_queue_size + s.instances * s.max_batch_size
        return cls(
            s.queue_timeout_ms,
            s.max_queue_size,
            s.max_batch_size,
            s.instances,
            capacity,
            s.max_concurrent_requests,
            s.max_body_bytes_in_flight,
            s.max_image_pixels,
            s.pool_threads,
            s.threads,
        )

    def bound_terms(self, crop_bytes: int) -> dict[str, int]:
        """Bytes the server may add to its idle RSS under any load, by cause."""
        return {
            "request bodies in flight (max_body_bytes_in_flight)": self.max_body_bytes_in_flight,
            "decodes in progress (preprocess threads x (max_image_pixels + resize bound) x 3 B)": self.preprocess_threads
            * (self.max_image_pixels + MAX_RESIZED_PIXELS)
            * 3,
            "admitted crops (admission capacity x crop)": self.admission_capacity * crop_bytes,
        }


@dataclass
class Overload:
    """One overload phase of one variant. Memory in bytes, rates per second."""

    variant: str
    peak: float
    """the closed-loop peak the offered rate is a multiple of, requests/s"""
    factor: float
    limits: Limits
    crop_bytes: int
    phase: PhaseResult
    rss_before: int = 0
    rss_after: int = 0
    rss_peak: int = 0
    """highest sampled RSS during the phase"""
    hwm_before: int = 0
    hwm_after: int = 0
    """the kernel's peak-RSS mark (VmHWM) before and after: a new peak set in the phase shows"""
    server: dict[str, float] = field(default_factory=dict)
    """metric deltas over the phase (``name{label=value}``)"""

    @property
    def bound(self) -> int:
        """Idle RSS before the phase plus :meth:`Limits.bound_terms`."""
        return self.rss_before + sum(self.limits.bound_terms(self.crop_bytes).values())

    @property
    def p99_goal_s(self) -> float:
        return 2 * self.limits.queue_timeout_ms / 1000

    def server_series(self, name: str) -> dict[str, float]:
        prefix = name + "{"
        return {
            k[len(prefix) :].split("=", 1)[1].rstrip("}"): v
            for k, v in self.server.items()
            if k.startswith(prefix)
        }


class RssSampler:
    """Samples ``VmRSS`` of one process every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-rss", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, procs.vm_bytes(self.pid, "VmRSS"))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def crop_bytes(crop: int) -> int:
    """Bytes of one uint8 crop ``[crop, crop, 3]``."""
    return crop * crop * 3
