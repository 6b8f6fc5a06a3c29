"""When a dead worker gets its replacement, and when the server gives up (``workers`` > 1).

Pure policy, no processes: a :class:`Slot` is the history of one worker slot (worker N and
the replacements that follow it), told by the supervisor (:mod:`server.workers`) what its
processes did and asked how long the next one must wait. Times are monotonic seconds.

- **Backoff per slot.** A replacement starts ``BACKOFF_FIRST_S`` after a death, twice as
  long for each further death in a row, at most ``BACKOFF_MAX_S``. A worker that was ready
  for ``HEALTHY_AFTER_S`` before it died ends the run of deaths: a crash a day costs a
  one-second gap, a crash loop one replacement every ``BACKOFF_MAX_S``, never a restart
  storm that takes the other workers' cores.
- **Misses.** A worker that exits without ever getting ready (its models failed to load, or
  it died while loading) is a *miss*; it is retried with the same backoff.
- **Giving up** (:func:`no_worker_can_serve`): when no worker is ready and every slot's last
  ``GIVE_UP_MISSES`` workers missed in a row. Deaths of workers that had got ready never
  count: a server whose workers keep getting ready keeps serving between the deaths.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0
GIVE_UP_MISSES = 3


@dataclass
class Slot:
    """One worker slot. ``deaths``: its workers in a row that ended before being ready for
    ``HEALTHY_AFTER_S`` (sets the backoff); ``misses``: in a row that ended before ready."""

    index: int
    alive: bool = False
    started_at: float = 0.0
    ready_at: float | None = None  # when its live worker got ready; None while loading
    ever_ready: bool = False
    deaths: int = 0
    misses: int = 0

    @property
    def serving(self) -> bool:
        """A live worker that has reported ready."""
        return self.alive and self.ready_at is not None

    def started(self, now: float) -> None:
        self.alive, self.started_at, self.ready_at = True, now, None

    def ready(self, now: float) -> None:
        self.ready_at, self.ever_ready, self.misses = now, True, 0

    def exited(self, now: float) -> float:
        """Its worker ended at ``now``: the seconds its replacement waits (>= BACKOFF_FIRST_S)."""
        if self.ready_at is None:
            self.misses += 1
        elif now - self.ready_at >= HEALTHY_AFTER_S:
            self.deaths = 0  # it served long enough: this death starts a new run
        self.alive, self.ready_at = False, None
        self.deaths += 1
        return min(BACKOFF_FIRST_S * 2.0 ** (self.deaths - 1), BACKOFF_MAX_S)


def no_worker_can_serve(slots: Iterable[Slot]) -> bool:
    """True when none is ready and each slot's last ``GIVE_UP_MISSES`` workers missed."""
    slots = list(slots)
    return not any(s.serving for s in slots) and all(s.misses >= GIVE_UP_MISSES for s in slots)
